import Dispatch

extension DispatchQueue {
    /// Runs `body` on this queue and returns its result to the awaiting task: blocking file work
    /// (SQLite, `fdatasync`) off the cooperative pool and off the MQTT client's loop. A serial
    /// queue runs such work in the order it was handed over.
    func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in self.async { c.resume(returning: body()) } }
    }
}
