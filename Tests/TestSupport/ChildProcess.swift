import Foundation
import CTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Errors from test fixtures. They say what to install when a tool is missing.
public struct FixtureError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A child process started by a test: output captured line by line, waits bounded, stopped by PID.
///
/// Only the process this object started is ever signalled.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let command: String
    private let state: Mutex<State>
    private let stdinFD: Int32

    private struct Waiter {
        let id: Int
        let predicate: @Sendable (String) -> Bool
        let continuation: CheckedContinuation<String, any Error>
    }

    private struct State {
        var lines: [String] = []
        var waiters: [Waiter] = []
        /// ``waitForExit(timeout:)`` calls parked, by id; resumed with nil when their time is up.
        var exitWaiters: [Int: CheckedContinuation<Int32?, Never>] = [:]
        /// Of the exit waits not answered yet, the ones whose time ran out before they parked.
        var expiredExitWaits: Set<Int> = []
        var liveExitWaits: Set<Int> = []
        var exitStatus: Int32?
        var nextID = 0
        var openStreams = 2
    }

    /// Starts `executable` with `arguments`. Output of stdout and stderr is merged into `lines`.
    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        self.command = ([executable] + arguments).joined(separator: " ")
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        // The child gets its own 0/1/2 and nothing else. Every socket and pipe of the test process
        // would otherwise live on in it: NIO opens its sockets without close-on-exec, so an MQTT
        // client that closes its connection in one test would keep it open in a gateway started by
        // another test, and the peer would see the close only when that gateway exits (a FakeBroker
        // test then waited ~15 s for a close that had happened). Our pipe ends are close-on-exec
        // from the start (pipe2), and the child closes every descriptor from 3 up before it runs.
        guard cts_pipe_cloexec(&inPipe) == 0, cts_pipe_cloexec(&outPipe) == 0, cts_pipe_cloexec(&errPipe) == 0 else {
            throw FixtureError("pipe failed")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        guard cts_spawn_close_from(&actions, 3) == 0 else { throw FixtureError("posix_spawn_file_actions_addclosefrom_np failed") }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), defaults = sigset_t()
        sigemptyset(&none)
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let argv = [executable] + arguments
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer {
            cArgs.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var child: pid_t = 0
        let rc = posix_spawnp(&child, executable, &actions, &attr, &cArgs, &cEnv)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw FixtureError("cannot start \(executable): \(String(cString: strerror(rc)))")
        }
        self.pid = child
        self.stdinFD = inPipe[1]
        self.state = Mutex(State())
        startReader(fd: outPipe[0])
        startReader(fd: errPipe[0])
        startReaper()
    }

    deinit {
        if state.withLock({ $0.exitStatus == nil }) { kill(pid, SIGKILL) }
        close(stdinFD)
    }

    /// Every line printed so far (stdout and stderr).
    public var lines: [String] { state.withLock { $0.lines } }
    /// The last lines, for failure messages.
    public var tail: String { state.withLock { $0.lines.suffix(25).joined(separator: "\n") } }
    /// Exit status (or 128 + signal) once exited.
    public var exitStatus: Int32? { state.withLock { $0.exitStatus } }

    /// Writes a line to the child's stdin.
    public func send(_ line: String) {
        let s = line + "\n"
        _ = s.withCString { write(stdinFD, $0, strlen($0)) }
    }

    /// Waits for a line (already printed or future) that satisfies `predicate`; fails after `timeout`
    /// or when the process exits first.
    @discardableResult
    public func waitForLine(timeout: Duration = .seconds(10), where predicate: @escaping @Sendable (String) -> Bool) async throws -> String {
        let id = state.withLock { s -> Int in s.nextID += 1; return s.nextID }
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            self?.failWaiter(id: id, reason: "timed out after \(timeout)")
        }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { cont in
            let result: Result<String, any Error>? = state.withLock { s in
                if let l = s.lines.first(where: predicate) { return .success(l) }
                if let status = s.exitStatus, s.openStreams <= 0 {
                    return .failure(FixtureError("\(command) exited (\(status)) before printing the expected line"))
                }
                s.waiters.append(Waiter(id: id, predicate: predicate, continuation: cont))
                return nil
            }
            if let result { cont.resume(with: result) }
        }
    }

    /// Waits for a line containing `text`.
    @discardableResult
    public func waitForLine(containing text: String, timeout: Duration = .seconds(10)) async throws -> String {
        try await waitForLine(timeout: timeout) { $0.contains(text) }
    }

    private func failWaiter(id: Int, reason: String) {
        let w = state.withLock { s -> Waiter? in
            guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return s.waiters.remove(at: i)
        }
        w?.continuation.resume(throwing: FixtureError("\(command): \(reason) waiting for a line; output so far:\n\(tail)"))
    }

    /// Waits for the process to exit (bounded); returns its status. On timeout it throws at once
    /// (its wait is withdrawn), also when the process never exits.
    public func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            s.liveExitWaits.insert(s.nextID)
            return s.nextID
        }
        let timer = Task { [weak self] in
            try await Task.sleep(for: timeout)
            self?.expireExitWait(id)
        }
        defer { timer.cancel() }
        let status: Int32? = await withCheckedContinuation { cont in
            let done = state.withLock { s -> Int32?? in
                if let e = s.exitStatus, s.openStreams <= 0 { s.liveExitWaits.remove(id); return .some(e) }
                if s.expiredExitWaits.remove(id) != nil { return .some(nil) }
                s.exitWaiters[id] = cont
                return nil
            }
            if let done { cont.resume(returning: done) }
        }
        guard let status else { throw FixtureError("\(command) did not exit within \(timeout); output:\n\(tail)") }
        return status
    }

    /// The time of exit wait `id` is up: resumed with nil if parked, else marked for when it parks.
    private func expireExitWait(_ id: Int) {
        let parked = state.withLock { s -> CheckedContinuation<Int32?, Never>? in
            guard s.liveExitWaits.remove(id) != nil else { return nil }   // answered already
            if let c = s.exitWaiters.removeValue(forKey: id) { return c }
            s.expiredExitWaits.insert(id)
            return nil
        }
        parked?.resume(returning: nil)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns the exit status.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> Int32 {
        if let s = exitStatus { return s }
        kill(pid, SIGTERM)
        if let s = try? await waitForExit(timeout: grace) { return s }
        kill(pid, SIGKILL)
        return (try? await waitForExit(timeout: .seconds(5))) ?? -1
    }

    /// Sends `signal` to this process only.
    public func signal(_ sig: Int32) { if exitStatus == nil { kill(pid, sig) } }

    // MARK: threads

    private func startReader(fd: Int32) {
        let weakSelf = WeakBox(self)
        Thread.detachNewThread {
            var pending = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                pending.append(contentsOf: buf[0..<n])
                while let nl = pending.firstIndex(of: 10) {
                    var line = Array(pending[..<nl])
                    if line.last == 13 { line.removeLast() }
                    pending.removeSubrange(...nl)
                    weakSelf.value?.add(line: String(decoding: line, as: UTF8.self))
                }
            }
            if !pending.isEmpty { weakSelf.value?.add(line: String(decoding: pending, as: UTF8.self)) }
            close(fd)
            weakSelf.value?.streamClosed()
        }
    }

    private func startReaper() {
        let pid = self.pid
        let weakSelf = WeakBox(self)
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            weakSelf.value?.exited(code)
        }
    }

    private func add(line: String) {
        let ready = state.withLock { s -> [(CheckedContinuation<String, any Error>, String)] in
            s.lines.append(line)
            var out: [(CheckedContinuation<String, any Error>, String)] = []
            s.waiters.removeAll { w in
                guard w.predicate(line) else { return false }
                out.append((w.continuation, line))
                return true
            }
            return out
        }
        for (c, l) in ready { c.resume(returning: l) }
    }

    private func streamClosed() {
        let ready = state.withLock { s -> (Int32, [CheckedContinuation<Int32?, Never>], [Waiter])? in
            s.openStreams -= 1
            return Self.takeFinished(&s)
        }
        finish(ready)
    }

    private func exited(_ code: Int32) {
        let ready = state.withLock { s -> (Int32, [CheckedContinuation<Int32?, Never>], [Waiter])? in
            s.exitStatus = code
            return Self.takeFinished(&s)
        }
        finish(ready)
    }

    /// Once the process has exited and its output is fully read, hands out the waiters to resume.
    private static func takeFinished(_ s: inout State) -> (Int32, [CheckedContinuation<Int32?, Never>], [Waiter])? {
        guard let code = s.exitStatus, s.openStreams <= 0 else { return nil }
        defer { s.waiters.removeAll(); s.exitWaiters.removeAll() }
        for id in s.exitWaiters.keys { s.liveExitWaits.remove(id) }
        return (code, Array(s.exitWaiters.values), s.waiters)
    }

    private func finish(_ ready: (Int32, [CheckedContinuation<Int32?, Never>], [Waiter])?) {
        guard let (code, exitWaiters, waiters) = ready else { return }
        for w in waiters { w.continuation.resume(throwing: FixtureError("\(command) exited (\(code)) before printing the expected line; output:\n\(tail)")) }
        for w in exitWaiters { w.resume(returning: code) }
    }
}

final class WeakBox<T: AnyObject & Sendable>: Sendable {
    private struct Weak: @unchecked Sendable {
        // @unchecked: the compiler does not infer Sendable for a struct with a `weak var`. It is safe:
        // the only stored property is a weak reference to a `T: Sendable` object, and it is only
        // read or written inside the Mutex below, so no two threads touch it at once.
        weak var value: T?
    }
    private let ref: Mutex<Weak>
    init(_ v: T) { ref = Mutex(Weak(value: v)) }
    var value: T? { ref.withLock { $0.value } }
}
