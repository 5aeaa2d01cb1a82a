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
/// A job that finds the device idle starts the task that runs it and whatever queues behind it
/// (``submit(_:run:)``), and that task ends once the queue is empty: a device holds no task
/// between its commands (a parked task cost about 6 KiB). The task starts at once on the
/// submitter's thread (`Task.immediate`) and runs there up to its first wait: a command read on
/// the MQTT client's loop is checked and its request sent before the loop does anything else,
/// without a hop through the loop's queue; after a wait it goes on on `executor`. Idiom: a Mutex
/// with the waiting jobs and a `running` flag rather than an AsyncStream, because the consumer
/// comes and goes and hands its state back each time.
final class DeviceJobQueue<Job: DeviceJob, State: Sendable>: Sendable {
    enum Submitted {
        /// Not taken: stopping, or ``CommandRequest/pendingPerDevice`` commands already waiting
        /// (the caller answers "busy").
        case refused
        case queued
        /// Queued, and no task runs the jobs: start one with ``serve(_:)``.
        case start
    }

    private struct Queue: Sendable {
        var jobs: [Job] = []
        var head = 0
        /// A task runs ``serve(_:)`` (it holds ``state``).
        var running = false
        /// ``stop()`` was called: no more jobs are taken.
        var stopping = false
        var state: State?
        /// ``stop()`` calls waiting for the task to end.
        var ended: [CheckedContinuation<Void, Never>] = []
        /// Commands queued or running.
        var commands = 0
    }

    private let queue: Mutex<Queue>
    /// Where the job task goes on after a wait: the MQTT client's loop (``MQTTClient/taskExecutor``),
    /// so a command is answered without a hop through the cooperative pool.
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
            Task.immediate(executorPreference: executor) { await self.serve(run) }
            return true
        }
    }

    /// Queues `job` unless stopping, full of commands, or covered by a job already waiting (then
    /// `.queued`: its work will be done).
    func enqueue(_ job: Job) -> Submitted {
        queue.withLock { q -> Submitted in
            guard !q.stopping else { return .refused }
            if q.jobs[q.head...].contains(where: { job.isCovered(by: $0) }) { return .queued }
            if job.isCommand {
                guard q.commands < CommandRequest.pendingPerDevice else { return .refused }
                q.commands += 1
            }
            q.jobs.append(job)
            guard q.running else {
                q.running = true
                return .start
            }
            return .queued
        }
    }

    private enum Next {
        case job(Job)
        case end([CheckedContinuation<Void, Never>])
    }

    /// Runs queued jobs in arrival order with the state, and returns once the queue is empty,
    /// the state handed back (and any ``stop()`` waiting told). Called once per `.start`.
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
                q.state = state
                q.running = false
                defer { q.ended = [] }
                return .end(q.ended)
            }
            switch next {
            case .job(let job):
                await run(job, &state)
                if job.isCommand { queue.withLock { $0.commands -= 1 } }
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
            let idle = queue.withLock { q -> Bool in
                q.stopping = true
                guard q.running else { return true }
                q.ended.append(c)
                return false
            }
            if idle { c.resume() }
        }
        return queue.withLock { $0.state.take() }
    }
}
