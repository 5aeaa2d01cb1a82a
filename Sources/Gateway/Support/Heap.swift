import Logging
import ServiceLifecycle

#if canImport(Glibc)
import CLinux
import Glibc
#endif

/// The gateway's heap: how many malloc arenas it may use (``limitArenas()``, at start) and the
/// start-up heap given back once (``StartupHeapTrim``).
public enum Heap {
    /// The most malloc arenas the process uses.
    public static let arenas = 2

    /// At most ``arenas`` malloc arenas, unless the environment already chose
    /// (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`). glibc gives each thread that
    /// allocates an arena of its own, up to 8 per core, and each keeps its own free memory and
    /// its own fragments: at 1000 devices (five bus threads, the event loop, the pool) three or
    /// more arenas held 11-12.6 MiB of own memory against 10.2-10.5 MiB with two (README
    /// "Footprint"). Call before the threads start allocating.
    public static func limitArenas() {
        #if canImport(Glibc)
        if getenv("MALLOC_ARENA_MAX") != nil { return }
        if let tunables = getenv("GLIBC_TUNABLES"), String(cString: tunables).contains("arena_max") { return }
        _ = mallopt(M_ARENA_MAX, Int32(arenas))
        #endif
    }
}

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
