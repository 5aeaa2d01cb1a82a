import MQTT
import NIOCore

/// Feeds arbitrary bytes to the decoder in both versions, whole and split in two, as the channel
/// handler does. Any crash, hang or sanitizer report is a bug; thrown errors are expected.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    for version in [MQTTVersion.v5, .v3_1_1] {
        var buffer = ByteBuffer(bytes: bytes)
        var packets: [MQTTPacket] = []
        while let p = try? MQTTPacketCodec.decode(from: &buffer, version: version, maximumPacketSize: 1 << 16) {
            packets.append(p)
            if packets.count > 1000 { break }
        }
        // Whatever decodes must encode and decode back to itself.
        for p in packets {
            var out = ByteBuffer()
            MQTTPacketCodec.encode(p, version: version, into: &out)
            let again = try? MQTTPacketCodec.decode(from: &out, version: version)
            if again != p, case .connect = p {} else if again != p { fatalError("round trip changed \(p) into \(String(describing: again))") }
        }
        // Drip: the first half, then the rest.
        let cut = size / 2
        var drip = ByteBuffer(bytes: bytes[..<cut])
        _ = try? MQTTPacketCodec.decode(from: &drip, version: version, maximumPacketSize: 1 << 16)
        drip.writeBytes(bytes[cut...])
        _ = try? MQTTPacketCodec.decode(from: &drip, version: version, maximumPacketSize: 1 << 16)
    }
    return 0
}

// SwiftPM links executables with `main` aliased to `<module>_main`; with -parse-as-library there is
// none, so provide it and hand control to libFuzzer's driver.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

@_cdecl("MQTTDecoderFuzzer_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v) { data, size in fuzz(data, size) }
}
