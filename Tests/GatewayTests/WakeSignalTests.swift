@testable import Gateway
import Testing

/// The signal behind a serial device's reply wait and systemd's `READY=1`: in-process.
@Suite("Wake signal", .timeLimit(.minutes(1)))
struct WakeSignalTests {
    @Test("a push before the wait is seen at once; without one the wait ends at its deadline")
    func pushBeforeAndDeadline() async {
        let signal = WakeSignal()
        #expect(await signal.wait(after: 0, until: .now + .milliseconds(20)) == false)
        signal.push()
        #expect(await signal.wait(after: 0, until: .now + .seconds(60)))
        #expect(await signal.wait(after: 1, until: .now + .milliseconds(20)) == false)
        #expect(signal.waiting == 0)
    }

    @Test("a push wakes every waiter; a cancelled waiter returns false")
    func pushAndCancel() async {
        let signal = WakeSignal()
        let waiters = (0..<8).map { _ in Task { await signal.wait(after: 0, until: .now + .seconds(60)) } }
        // An hour: only the cancellation can end this wait within the suite's time limit.
        let cancelled = Task { await signal.wait(after: 0, until: .now + .seconds(3600)) }
        cancelled.cancel()
        #expect(await cancelled.value == false)
        signal.push()
        for w in waiters { #expect(await w.value) }
        #expect(signal.waiting == 0)
    }

    @Test("pushes, deadlines and cancellations racing leave no waiter behind")
    func races() async {
        let signal = WakeSignal()
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<200 {
                let g = signal.generation
                let waiter = Task { _ = await signal.wait(after: g, until: .now + .microseconds(i % 7 * 50)) }
                if i % 3 == 0 { waiter.cancel() }
                group.addTask { _ = await waiter.value }
                if i % 2 == 0 { group.addTask { signal.push() } }
            }
        }
        #expect(signal.waiting == 0)
    }
}
