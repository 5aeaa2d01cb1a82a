#if canImport(Glibc)
import Glibc
#endif

/// A mutex + condition variable pair (pthread).
///
/// `@unchecked Sendable` is safe because every access to the protected value goes through
/// `withLock`/`wait`, which hold the pthread mutex; the pointers themselves are never reassigned.
package final class ConditionLock<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Changes the value under the lock and wakes every waiter, after the unlock: a waiter woken
    /// while the mutex is still held blocks on it at once and must be woken a second time (seen
    /// with strace on the command path: two more futex calls and a thread switch per bus
    /// request). Safe because a waiter checks its condition under the lock after it wakes.
    package func withLockSignalling<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer {
            pthread_mutex_unlock(mutex)
            pthread_cond_broadcast(cond)
        }
        return try body(&value)
    }

    /// Runs `body` with the lock held and a function that waits on the condition until an absolute
    /// monotonic deadline (returns false on timeout).
    package func withLockedWait<R>(_ body: (inout Value, (inout timespec) -> Bool) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let cond = self.cond, mutex = self.mutex
        return body(&value) { deadline in pthread_cond_timedwait(cond, mutex, &deadline) != ETIMEDOUT }
    }

    /// Waits until `body` returns non-nil, then returns it (with the lock held while `body` runs).
    package func wait<R>(until body: (inout Value) -> R?) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let r = body(&value) { return r }
            pthread_cond_wait(cond, mutex)
        }
    }
}

extension ConditionLock {
    /// Like ``wait(until:)`` but gives up after `timeout` (monotonic clock) and returns nil.
    package func wait<R>(timeout: Duration, until body: (inout Value) -> R?) -> R? {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let ns = Int(deadline.tv_nsec) + Int(timeout.components.attoseconds / 1_000_000_000)
        deadline.tv_sec += Int(timeout.components.seconds) + ns / 1_000_000_000
        deadline.tv_nsec = ns % 1_000_000_000
        return withLockedWait { value, timedWait in
            while true {
                if let r = body(&value) { return r }
                if !timedWait(&deadline) { return body(&value) }
            }
        }
    }
}

/// Starts a detached pthread running `body`.
package func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, name: String) { self.body = body; self.name = name }
    }
    let box = Unmanaged.passRetained(Box(body, name: name)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    pthread_detach(tid)
}

extension Duration {
    /// The whole duration in nanoseconds (saturating at Int64's range: 292 years).
    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return seconds < 0 ? .min : .max }
        return product.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }
}
