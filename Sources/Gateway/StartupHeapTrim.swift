import Logging
import ServiceLifecycle

#if canImport(Glibc)
import CLinux
#endif

/// Once, a while after start: the heap start-up freed (the configuration read and planned, Home
/// Assistant's discovery payloads for every device, the first polls) goes back to the kernel
/// (`malloc_trim`). glibc keeps freed memory in its arenas, and it counts as the gateway's own
/// memory (Private_Dirty) for as long as it runs: measured with `Benchmarks/uplink_bench.py` at
/// 100 devices (README "Footprint"). Steady-state work reuses what it frees, so once is enough.
public struct StartupHeapTrim: Service {
    /// How long after start: past the first connect, discovery and the first polls.
    public static let delay: Duration = .seconds(10)
    let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    public func run() async throws {
        // A stop before the time: nothing to give back.
        do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.delay) } } catch { return }
        #if canImport(Glibc)
        let before = GatewayTelemetry.privateDirtyBytes() ?? 0
        _ = malloc_trim(0)
        let after = GatewayTelemetry.privateDirtyBytes() ?? 0
        logger.info("start-up heap given back: own memory \(before / 1024) -> \(after / 1024) KiB")
        #endif
    }
}
