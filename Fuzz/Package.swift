// swift-tools-version:6.1
// libFuzzer target over the MQTT decoder. Kept out of the main package because it only links
// with -sanitize=fuzzer (given on the command line so that every module, MQTT included, is
// instrumented for coverage). Run: Fuzz/run.sh [seconds]
import PackageDescription

let package = Package(
    name: "MQTTFuzz",
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(name: "MQTTDecoderFuzzer", dependencies: [
            .product(name: "MQTT", package: "main"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
    ]
)
