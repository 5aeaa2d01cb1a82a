import Serial
import GatewayConfig
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Framing")
struct FramingTests {
    @Test("lines: LF or CRLF, split across reads")
    func lines() {
        var s = FrameSplitter(framing: .line, maxFrame: 64)
        #expect(s.feed(Array("QR:12".utf8)) == [])
        #expect(s.feed(Array("34\r\nQR:9\nhalf".utf8)) == [Array("QR:1234".utf8), Array("QR:9".utf8)])
        #expect(s.buffered == 4)
    }

    @Test("STX..ETX: noise outside frames dropped and counted")
    func delimited() {
        var s = FrameSplitter(framing: .delimiter(end: [0x03], start: [0x02]), maxFrame: 64)
        #expect(s.feed([0x41, 0x02, 0x31, 0x32, 0x03, 0x42, 0x43, 0x02, 0x33]) == [[0x31, 0x32]])
        #expect(s.feed([0x03]) == [[0x33]])
        #expect(s.droppedBytes == 3)
        var e = FrameSplitter(framing: .delimiter(end: Array("\r\n".utf8), start: nil), maxFrame: 64)
        #expect(e.feed(Array("a\rb\r".utf8)) == [])
        #expect(e.feed(Array("\nc\r\n".utf8)) == [Array("a\rb".utf8), Array("c".utf8)])
    }

    @Test("fixed length frames")
    func fixed() {
        var s = FrameSplitter(framing: .fixed(3), maxFrame: 64)
        #expect(s.feed([1, 2, 3, 4, 5, 6, 7]) == [[1, 2, 3], [4, 5, 6]])
    }

    @Test("an endless frame is dropped, counted, and never grows the buffer; the next frame is fine")
    func oversized() {
        var s = FrameSplitter(framing: .line, maxFrame: 16)
        for _ in 0..<10_000 {
            #expect(s.feed(Array(repeating: UInt8(ascii: "x"), count: 100)).isEmpty)
            #expect(s.buffered <= 17)
        }
        #expect(s.oversized == 1)
        #expect(s.feed(Array("tail\nok\n".utf8)) == [Array("ok".utf8)])
        var d = FrameSplitter(framing: .delimiter(end: [0x03], start: [0x02]), maxFrame: 8)
        #expect(d.feed([0x02] + Array(repeating: 0x41, count: 50_000) + [0x03, 0x02, 0x31, 0x03]) == [[0x31]])
        #expect(d.oversized == 1 && d.buffered == 0)
    }

    @Test("escapes in settings")
    func escapes() throws {
        #expect(try ByteEscapes.decode(#"BEEP\x02{value}\r\n"#).get() == Array("BEEP".utf8) + [0x02] + Array("{value}\r\n".utf8))
        #expect((try? ByteEscapes.decode(#"\x2"#).get()) == nil)
        #expect((try? ByteEscapes.decode(#"\q"#).get()) == nil)
    }
}

@Suite("Serial lines over socat pty pairs", .timeLimit(.minutes(1)))
struct SerialLineTests {
    @Test("frames in, bytes out, exclusive access, and the stream ends when the other end vanishes")
    func roundTrip() async throws {
        let pty = try await PtyPair.start()
        let line = try await SerialLine.open(SerialSettings(path: pty.a, baud: 115200, parity: .even), framing: .line, maxFrame: 256)
        // Exclusive access (TIOCEXCL): a second open is refused, except for root, which the
        // kernel lets through; the exclusive flag itself is checked with TIOCGEXCL.
        if getuid() != 0 {
            #expect(throws: SerialError.self) { _ = try SerialPort.open(SerialSettings(path: pty.a)) }
        }
        let far = try FarEnd(pty.b)
        let probe = try SerialPort.open(SerialSettings(path: pty.b))
        var exclusive: Int32 = 0
        #expect(ioctl(probe, 0x8004_5440 /* TIOCGEXCL */, &exclusive) == 0 && exclusive != 0)
        close(probe)
        var frames = line.frames.makeAsyncIterator()
        await far.send("QR:hello\r\nQR:wor")
        await far.send("ld\n")
        #expect(await frames.next() == Array("QR:hello".utf8))
        #expect(await frames.next() == Array("QR:world".utf8))
        try await line.write([0x02] + Array("BEEP 3\r\n".utf8) + [0x03])
        #expect(await far.receive(10) == [0x02] + Array("BEEP 3\r\n".utf8) + [0x03])
        await pty.stop()
        #expect(await frames.next() == nil)
        #expect(line.isOpen == false)
        #expect(line.closeReason != nil)
    }

    @Test("a reader that falls more than the buffer behind loses the oldest frames, counted: never silently")
    func overflowCounted() async throws {
        let pty = try await PtyPair.start()
        // max_frame 65536: the buffer holds its floor of 256 frames.
        let line = try await SerialLine.open(SerialSettings(path: pty.a), framing: .line, maxFrame: 65_536)
        let far = try FarEnd(pty.b)
        let text = (1...600).map { String(format: "F%04d\n", $0) }.joined()
        #expect(await far.send(text))
        // Nothing reads the frames: 600 - 256 of them overflow.
        #expect(await line.overflowed(atLeast: 344, timeout: .seconds(10)) == 344)
        var frames = line.frames.makeAsyncIterator()
        #expect(await frames.next() == Array("F0345".utf8))
        await pty.stop()
    }

    @Test("a missing port is a clear error")
    func missing() async throws {
        #expect(throws: SerialError.open(path: "/nonexistent/ttyUSB9", errno: ENOENT)) {
            _ = try SerialPort.open(SerialSettings(path: "/nonexistent/ttyUSB9"))
        }
    }
}
