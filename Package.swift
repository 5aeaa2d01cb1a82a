// swift-tools-version:6.1
import PackageDescription

/// Settings shared by every Swift target: Swift 6 language mode (strict concurrency) everywhere.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

/// The release `gateway` is linked for a small resident set (measured with the demo config,
/// Benchmarks/uplink_bench.py and /proc/PID/smaps; see README "Footprint"):
/// - the Swift runtime linked in (`-static-stdlib`): no libswiftCore/Foundation .so pages
///   mapped beside ours, and nothing to install on the Pi but libmodbus;
/// - lld with packed relative relocations (DT_RELR, glibc >= 2.36): the 1.4 MiB `.rela.dyn`
///   of a PIE is read at every start otherwise; the binary stays position-independent (ASLR);
/// - no exported dynamic symbol table (`--no-export-dynamic`, which the static-stdlib link
///   turns on): 1.6 MiB of symbol names nobody looks up;
/// - libstdc++ linked in (the linker script deploy/link/libstdc++.so points `-lstdc++` at
///   libstdc++.a): libstdc++.so.6 mapped beside us was 1.1 MiB resident for a few functions.
/// Debug builds (tests) link as usual.
let releaseLinkerSettings: [LinkerSetting] = [
    // FoundationEssentials (used by swift-argument-parser) needs its two helper libraries named
    // when linked statically (`swift build --static-swift-stdlib` adds the same two).
    .unsafeFlags(["-static-stdlib", "-use-ld=lld", "-l_FoundationCollections", "-l_FoundationCShims",
                  "-L\(Context.packageDirectory)/deploy/link", "-Xlinker", "--no-export-dynamic", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"],
                 .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "gateway",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "gateway", targets: ["GatewayCLI"]),
        .executable(name: "gateway-bench", targets: ["GatewayBench"]),
        .library(name: "MQTT", targets: ["MQTT"]),
        .library(name: "Modbus", targets: ["Modbus"]),
        .library(name: "Serial", targets: ["Serial"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        // libmodbus through pkg-config (Debian: libmodbus-dev).
        .systemLibrary(name: "CModbus", pkgConfig: "libmodbus", providers: [.apt(["libmodbus-dev"])]),

        // glibc's sys/timex.h (adjtimex: whether the system clock is synchronised) and malloc.h
        // (malloc_trim, once after start-up).
        .systemLibrary(name: "CLinux"),

        // SQLite through pkg-config (Debian: libsqlite3-dev): the outbox's storage.
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),

        // Parity and baud rates, shared by Modbus RTU, raw serial lines and the config. No dependencies.
        .target(name: "LineSettings", swiftSettings: swiftSettings),

        // MQTT 3.1.1 / 5.0 client: codec (NIOCore only) + connection on NIOPosix/NIOSSL.
        .target(name: "MQTT", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: swiftSettings),

        // Swift face of libmodbus: buses on their own threads, codecs, read planning, simulator.
        .target(name: "Modbus", dependencies: [
            "CModbus", "LineSettings",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: swiftSettings),

        // The Modbus device behind `gateway simulate` (and the Modbus benchmark): libmodbus's
        // server API, on a thread of its own. Not part of the running gateway.
        .target(name: "ModbusSimulator", dependencies: ["CModbus", "Modbus", "LineSettings"], swiftSettings: swiftSettings),

        // Raw serial lines: termios + framing on SwiftNIO.
        .target(name: "Serial", dependencies: [
            "LineSettings",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: swiftSettings),

        // gateway.toml -> plain values + validation. No NIO, no libmodbus.
        // Our own TOML 1.0 reader (the TOMLReader target): TOMLKit would bring full Foundation and ICU
        // into `gateway run` (about 6 MiB resident) for nothing else.
        .target(name: "GatewayConfig", dependencies: ["TOMLReader", "LineSettings"], swiftSettings: swiftSettings),

        // A TOML 1.0 reader with line numbers on every value (no Foundation).
        .target(name: "TOMLReader", swiftSettings: swiftSettings),

        // The domain: devices, points, scheduling, uplink, downlink, availability.
        .target(name: "Gateway", dependencies: [
            "GatewayConfig", "LineSettings", "MQTT", "Modbus", "Serial", "CLinux", "CSQLite", "Operations",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: swiftSettings),

        // What operators and systemd talk to: a small HTTP/1.1 listener on the gateway's event
        // loop, sd_notify, the embedded status page. Knows nothing of devices.
        .target(name: "Operations", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: swiftSettings),

        // Commissioning: `gateway scan` (which units answer on a line, at which setting, and what
        // they are) over our own Modbus framing. Not part of `gateway run`.
        .target(name: "Commissioning", dependencies: ["Modbus", "Serial", "LineSettings", "GatewayConfig"], swiftSettings: swiftSettings),

        // The `gateway` executable: run, check, read, write, simulate, scan, profiles.
        .executableTarget(name: "GatewayCLI", dependencies: [
            "Gateway", "GatewayConfig", "LineSettings", "Modbus", "ModbusSimulator", "MQTT", "Operations", "Commissioning",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: swiftSettings, linkerSettings: releaseLinkerSettings, plugins: ["BuildInfo"]),

        // Generates the git revision `gateway --version` prints.
        .plugin(name: "BuildInfo", capability: .buildTool()),

        // Benchmarks (not tests): swift run -c release gateway-bench modbus|mqtt ...
        .executableTarget(name: "GatewayBench", dependencies: [
            "Modbus", "ModbusSimulator", "MQTT",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], swiftSettings: swiftSettings),

        // Shared by all test targets: private Mosquitto, simulators, socat pty pairs, the MQTT observer
        // and the end-to-end gateway rig.
        .target(name: "TestSupport", dependencies: ["MQTT", "CTestSupport"], path: "Tests/TestSupport", exclude: ["scripts"], swiftSettings: swiftSettings),
        // glibc's pipe2 and posix_spawn_file_actions_addclosefrom_np (declared only with _GNU_SOURCE).
        .target(name: "CTestSupport", path: "Tests/CTestSupport"),

        .testTarget(name: "TestSupportTests", dependencies: ["TestSupport", "Modbus"], swiftSettings: swiftSettings),
        .testTarget(name: "MQTTTests", dependencies: [
            "MQTT", "TestSupport",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], swiftSettings: swiftSettings),
        .testTarget(name: "CommissioningTests", dependencies: ["Commissioning", "Modbus", "LineSettings", "GatewayConfig", "MQTT", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "ModbusTests", dependencies: ["Modbus", "LineSettings", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "SerialTests", dependencies: ["Serial", "LineSettings", "GatewayConfig", "TestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "GatewayConfigTests", dependencies: ["GatewayConfig", "TOMLReader", "TestSupport"], exclude: ["Fixtures"], swiftSettings: swiftSettings),
        .testTarget(name: "GatewayTests", dependencies: ["Gateway", "GatewayConfig", "MQTT", "Modbus", "ModbusSimulator", "Operations", "TestSupport",
                                                        .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle")],
                    swiftSettings: swiftSettings),
    ]
)
