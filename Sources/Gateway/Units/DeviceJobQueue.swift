import Synchronization

/// A job for a device's ``DeviceJobQueue``.
protocol DeviceJob: Sendable {
    /// A `/set` or `/get` from MQTT: counted against ``CommandRequest/pendingPerDevice``. The
    /// gateway's own jobs (pulse ends, latch clears, fail-safe writes) always go in.
    var isCommand: Bool { get }
    /// True when `waiting`, already queued, does this job's work (a second latch clear).
    func isCovered(by waiting: Self) -> Bool
}

/// One device's jobs, Modbus and serial alike, run one at a time in arrival order, so that a
/// pulse's end can never overtake the command that extended it. `State` is what the jobs
/// change (the command pipeline, the pulses): handed to each job in turn, parked here while no
/// job runs.
///
/// The task that runs them is started by the first job (``submit(_:run:)``) and then waits
/// for more: a device that never gets a command (a sensor) holds no task (a parked task cost
/// about 6 KiB, 0.6 MiB at 100 devices), and only its first command pays for starting one (a
/// task per command cost about 0.1 ms on every command). Idiom: a Mutex with one parked
/// continuation rather than an AsyncStream, because the consumer is started lazily and hands
/// its state back when the device stops.
final class DeviceJobQueue<Job: DeviceJob, State: Sendable>: Sendable {
    enum Submitted {
        /// Not taken: stopping, or ``CommandRequest/pendingPerDevice`` commands already waiting
        /// (the caller answers "busy").
        case refused
        case queued
        /// Queued, and no task runs the jobs yet: start one with ``serve(_:)``.
        case start
    }

    private struct Queue: Sendable {
        var jobs: [Job] = []
        var head = 0
        /// A task runs ``serve(_:)`` (it holds ``state``).
        var running = false
        /// That task, waiting for a job.
        var parked: CheckedContinuation<Void, Never>?
        /// ``stop()`` was called: no more jobs are taken; the task ends once the queue is empty.
        var stopping = false
        var state: State?
        /// ``stop()`` calls waiting for the task to end.
        var ended: [CheckedContinuation<Void, Never>] = []
        /// Commands queued or running.
        var commands = 0
    }

    private let queue: Mutex<Queue>
    /// Where the job task runs its own code: the MQTT client's loop (``MQTTClient/taskExecutor``),
    /// so a command arrives, is checked and is answered without a hop through the cooperative pool.
    private let executor: (any TaskExecutor)?

    init(_ state: State, executor: (any TaskExecutor)?) {
        queue = Mutex(Queue(state: state))
        self.executor = executor
    }

    /// Queues `job`; the first one starts the task that runs them all with `run`. False (nothing
    /// queued) when stopping or when ``CommandRequest/pendingPerDevice`` commands already wait:
    /// the caller answers "busy".
    func submit(_ job: Job, run: @escaping @Sendable (Job, inout State) async -> Void) -> Bool {
        switch enqueue(job) {
        case .refused: return false
        case .queued: return true
        case .start:
            Task(executorPreference: executor) { await self.serve(run) }
            return true
        }
    }

    /// Queues `job` unless stopping, full of commands, or covered by a job already waiting (then
    /// `.queued`: its work will be done).
    func enqueue(_ job: Job) -> Submitted {
        let (submitted, wake) = queue.withLock { q -> (Submitted, CheckedContinuation<Void, Never>?) in
            guard !q.stopping else { return (.refused, nil) }
            if q.jobs[q.head...].contains(where: { job.isCovered(by: $0) }) { return (.queued, nil) }
            if job.isCommand {
                guard q.commands < CommandRequest.pendingPerDevice else { return (.refused, nil) }
                q.commands += 1
            }
            q.jobs.append(job)
            guard q.running else {
                q.running = true
                return (.start, nil)
            }
            return (.queued, q.parked.take())
        }
        wake?.resume()
        return submitted
    }

    private enum Next {
        case job(Job)
        case wait
        case end([CheckedContinuation<Void, Never>])
    }

    /// Runs queued jobs in arrival order with the state, waits when there is none, and returns
    /// once stopping and the queue is empty. Called once per `.start`.
    func serve(_ run: (Job, inout State) async -> Void) async {
        guard var state = queue.withLock({ $0.state.take() }) else { return }
        while true {
            let next = queue.withLock { q -> Next in
                if q.head < q.jobs.count {
                    let job = q.jobs[q.head]
                    q.head += 1
                    return .job(job)
                }
                q.jobs.removeAll()
                q.head = 0
                guard q.stopping else { return .wait }
                q.state = state
                q.running = false
                defer { q.ended = [] }
                return .end(q.ended)
            }
            switch next {
            case .job(let job):
                await run(job, &state)
                if job.isCommand { queue.withLock { $0.commands -= 1 } }
            case .wait:
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let ready = queue.withLock { q -> Bool in
                        if q.head < q.jobs.count || q.stopping { return true }
                        q.parked = c
                        return false
                    }
                    if ready { c.resume() }
                }
            case .end(let waiters):
                for w in waiters { w.resume() }
                return
            }
        }
    }

    /// Applies `change` to the state while no job runs (before the first job); nil when a job
    /// task holds the state or stop took it.
    func withIdleState<R>(_ change: (inout State) -> R) -> R? {
        queue.withLock { q -> R? in
            guard var state = q.state.take() else { return nil }
            defer { q.state = state }
            return change(&state)
        }
    }

    /// Takes no more jobs, waits until the queued ones have run, and hands back the state (nil
    /// when an earlier stop took it).
    func stop() async -> State? {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            var idle = false
            let wake = queue.withLock { q -> CheckedContinuation<Void, Never>? in
                q.stopping = true
                guard q.running else {
                    idle = true
                    return nil
                }
                q.ended.append(c)
                return q.parked.take()
            }
            wake?.resume()
            if idle { c.resume() }
        }
        return queue.withLock { $0.state.take() }
    }
}
