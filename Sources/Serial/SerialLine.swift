import LineSettings
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The Serial module: raw serial lines (barcode and card readers, displays, ASCII protocols).
// ``SerialLine`` opens a tty with termios (exclusive, `O_NOCTTY`) as a SwiftNIO pipe channel and
// cuts what arrives into frames (``Framing``: lines, delimiters with an optional start, fixed length), each
// bounded; writes have a deadline, so a line nobody reads cannot hold a command.

/// Line settings of a serial port.
public struct SerialSettings: Sendable, Equatable {
    public var path: String
    public var baud: Int
    public var parity: Parity
    public var dataBits: Int
    public var stopBits: Int
    /// RTS/CTS hardware flow control (off by default).
    public var hardwareFlowControl: Bool

    public init(path: String, baud: Int = 9600, parity: Parity = .none, dataBits: Int = 8, stopBits: Int = 1, hardwareFlowControl: Bool = false) {
        self.path = path
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
        self.hardwareFlowControl = hardwareFlowControl
    }
}

public enum SerialError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The port could not be opened (missing, busy, no permission).
    case open(path: String, errno: Int32)
    /// termios refused the settings.
    case configure(path: String, String)
    /// The port is closed (unplugged, hung up, or closed by us).
    case closed(String)
    /// A write the line did not take within its time (flow control holding it, nobody reading):
    /// the port was closed and what it had not sent was discarded. Part of it may have gone out.
    case writeTimedOut(Duration)

    public var description: String {
        switch self {
        case .writeTimedOut(let d):
            return "the line did not take the write within \(d) (flow control, or nobody reading); the port was closed and the rest discarded"
        case .open(let p, let e):
            let why = String(cString: strerror(e))
            return "cannot open \(p): \(why) (errno \(e))\(e == EBUSY ? ": another program holds it (exclusive access)" : "")"
        case .configure(let p, let s): return "cannot configure \(p): \(s)"
        case .closed(let s): return "serial port closed: \(s)"
        }
    }
}

/// Opens and configures a tty with termios: raw mode, the given baud/parity/bits, no flow control
/// unless asked, exclusive access (TIOCEXCL), non-blocking, and without becoming our controlling
/// terminal (O_NOCTTY).
public enum SerialPort {
    public static func open(_ s: SerialSettings) throws(SerialError) -> Int32 {
        let fd = Glibc.open(s.path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw .open(path: s.path, errno: errno) }
        do throws(SerialError) {
            try configure(fd, s)
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    static func configure(_ fd: Int32, _ s: SerialSettings) throws(SerialError) {
        guard isatty(fd) == 1 else { throw .configure(path: s.path, "not a terminal device") }
        // Exclusive: a second open by another process fails with EBUSY.
        guard ioctl(fd, UInt(TIOCEXCL)) == 0 else { throw .configure(path: s.path, "TIOCEXCL: \(String(cString: strerror(errno)))") }
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { throw .configure(path: s.path, "tcgetattr: \(String(cString: strerror(errno)))") }
        cfmakeraw(&t)
        guard let speed = speed(s.baud) else {
            throw .configure(path: s.path, "baud \(s.baud) is not supported (\(BaudRate.supportedList))")
        }
        cfsetispeed(&t, speed)
        cfsetospeed(&t, speed)
        t.c_cflag &= ~(tcflag_t(CSIZE) | tcflag_t(PARENB) | tcflag_t(PARODD) | tcflag_t(CSTOPB) | tcflag_t(CRTSCTS))
        switch s.dataBits {
        case 5: t.c_cflag |= tcflag_t(CS5)
        case 6: t.c_cflag |= tcflag_t(CS6)
        case 7: t.c_cflag |= tcflag_t(CS7)
        case 8: t.c_cflag |= tcflag_t(CS8)
        default: throw .configure(path: s.path, "data bits must be 5...8, not \(s.dataBits)")
        }
        switch s.parity {
        case .none: break
        case .even: t.c_cflag |= tcflag_t(PARENB)
        case .odd: t.c_cflag |= tcflag_t(PARENB) | tcflag_t(PARODD)
        }
        if s.stopBits == 2 { t.c_cflag |= tcflag_t(CSTOPB) }
        if s.hardwareFlowControl { t.c_cflag |= tcflag_t(CRTSCTS) }
        t.c_cflag |= tcflag_t(CLOCAL) | tcflag_t(CREAD)
        t.c_iflag &= ~(tcflag_t(IXON) | tcflag_t(IXOFF) | tcflag_t(IXANY))
        guard tcsetattr(fd, TCSANOW, &t) == 0 else { throw .configure(path: s.path, "tcsetattr: \(String(cString: strerror(errno)))") }
        _ = tcflush(fd, TCIOFLUSH)
    }

    static func speed(_ baud: Int) -> speed_t? {
        switch baud {
        case 1200: speed_t(B1200)
        case 2400: speed_t(B2400)
        case 4800: speed_t(B4800)
        case 9600: speed_t(B9600)
        case 19200: speed_t(B19200)
        case 38400: speed_t(B38400)
        case 57600: speed_t(B57600)
        case 115200: speed_t(B115200)
        case 230400: speed_t(B230400)
        case 460800: speed_t(B460800)
        case 921600: speed_t(B921600)
        default: nil
        }
    }
}

/// An open serial port as a SwiftNIO channel (NIOPipeBootstrap over the tty descriptor: no
/// blocking reads anywhere). Frames arrive on ``frames``; the stream ends when the port closes
/// (other end gone, USB adapter unplugged: EIO/ENODEV/hangup) and ``closeReason`` says why.
public final class SerialLine: Sendable {
    public let settings: SerialSettings
    public let frames: AsyncStream<[UInt8]>
    private let channel: any Channel
    private let handler: FrameHandler
    /// The tty's descriptor, owned by `channel`: used only on its event loop while it is active.
    private let descriptor: Int32

    private init(settings: SerialSettings, channel: any Channel, handler: FrameHandler, frames: AsyncStream<[UInt8]>, descriptor: Int32) {
        self.settings = settings
        self.descriptor = descriptor
        self.channel = channel
        self.handler = handler
        self.frames = frames
    }

    /// Opens the port and starts reading frames.
    public static func open(_ settings: SerialSettings, framing: Framing, maxFrame: Int,
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> SerialLine {
        let fd = try SerialPort.open(settings)
        // Frames wait here while the reader is busy (a burst of scans on a loaded machine): up
        // to about 1 MiB of them (1024 at the default max_frame), never fewer than 256. Past
        // that the oldest go, counted (``overflowedFrames``), never silently.
        let (frames, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingNewest(max(256, (1 << 20) / max(1, maxFrame))))
        let handler = FrameHandler(splitter: FrameSplitter(framing: framing, maxFrame: maxFrame), continuation: continuation)
        let channel: any Channel
        do {
            channel = try await NIOPipeBootstrap(group: group)
                .channelOption(.allowRemoteHalfClosure, value: false)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) } }
                .takingOwnershipOfDescriptor(inputOutput: fd)
                .get()
        } catch {
            Glibc.close(fd)
            continuation.finish()
            throw SerialError.configure(path: settings.path, "\(error)")
        }
        return SerialLine(settings: settings, channel: channel, handler: handler, frames: frames, descriptor: fd)
    }

    /// Writes bytes to the device; returns when they are handed to the kernel.
    public func write(_ bytes: [UInt8]) async throws {
        guard channel.isActive else { throw SerialError.closed(closeReason ?? "closed") }
        try await channel.writeAndFlush(channel.allocator.buffer(bytes: bytes))
    }

    /// Writes bytes to the device, or gives up after `timeout`: when the kernel has not taken them
    /// all by then (the line is held by flow control, or nobody reads it), the output not yet
    /// sent is discarded (`tcflush`, and the channel's pending writes) and the port closed, so a
    /// command never goes out late; throws ``SerialError/writeTimedOut(_:)``. The port is to be
    /// reopened by the owner, as after a hangup.
    public func write(_ bytes: [UInt8], within timeout: Duration) async throws {
        guard channel.isActive else { throw SerialError.closed(closeReason ?? "closed") }
        let channel = self.channel, fd = self.descriptor
        let timedOut = Flag()
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: promise)
        let written = promise.futureResult
        let timer = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            guard channel.isActive else { return }
            timedOut.set()
            self.handler.state.withLock { if $0.closeReason == nil { $0.closeReason = "\(SerialError.writeTimedOut(timeout))" } }
            // On the event loop, so the descriptor is still the channel's: drop what the kernel holds.
            tcflush(fd, TCOFLUSH)
            channel.close(promise: nil)   // fails the pending write: nothing of it is sent later
        }
        do {
            try await written.get()
            timer.cancel()
        } catch {
            timer.cancel()
            if timedOut.isSet { throw SerialError.writeTimedOut(timeout) }
            throw error
        }
    }

    public var isOpen: Bool { channel.isActive }

    /// Why the port closed (nil while open).
    public var closeReason: String? { handler.state.withLock { $0.closeReason } }
    /// Frames dropped because they grew past `maxFrame`, and bytes dropped outside frames.
    public var oversizedFrames: Int { handler.state.withLock { $0.splitter.oversized } }
    public var droppedBytes: Int { handler.state.withLock { $0.splitter.droppedBytes } }
    /// Frames dropped (the oldest waiting) because the reader fell more than the buffer behind.
    public var overflowedFrames: Int { handler.state.withLock { $0.overflowed } }

    /// Waits until at least `count` frames have overflowed, or `timeout` passed (for a monitor, or
    /// a test); returns the count then.
    public func overflowed(atLeast count: Int, timeout: Duration) async -> Int {
        let id = handler.nextWaiterID()
        return await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return }  // cancelled: the count was reached
                self.handler.expire(id)
            }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                if !handler.wait(id: id, atLeast: count, c) { c.resume() }
            }
            group.cancelAll()
            return overflowedFrames
        }
    }

    public func close() async {
        try? await channel.close()
    }
}

final class FrameHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    struct State {
        var splitter: FrameSplitter
        var closeReason: String?
        /// Frames dropped because the reader fell too far behind.
        var overflowed = 0
        /// Waiting for `overflowed` to reach a count (``SerialLine/overflowed(atLeast:timeout:)``).
        var waiters: [Int: (count: Int, continuation: CheckedContinuation<Void, Never>)] = [:]
        var nextWaiter = 0
        /// Waiters whose time ran out before they registered.
        var expired: Set<Int> = []
    }

    let state: Mutex<State>
    let continuation: AsyncStream<[UInt8]>.Continuation

    init(splitter: FrameSplitter, continuation: AsyncStream<[UInt8]>.Continuation) {
        self.state = Mutex(State(splitter: splitter))
        self.continuation = continuation
    }

    func nextWaiterID() -> Int { state.withLock { s in s.nextWaiter += 1; return s.nextWaiter } }

    /// Registers a waiter; false (not registered) when the count is already reached or it expired.
    func wait(id: Int, atLeast count: Int, _ c: CheckedContinuation<Void, Never>) -> Bool {
        state.withLock { s in
            guard s.overflowed < count, s.expired.remove(id) == nil else { return false }
            s.waiters[id] = (count, c)
            return true
        }
    }

    /// The time ran out: the waiter is resumed, or, not registered yet, will not be.
    func expire(_ id: Int) {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let w = s.waiters.removeValue(forKey: id) else { s.expired.insert(id); return nil }
            return w.continuation
        }
        c?.resume()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).readableBytesView
        let frames = state.withLock { s -> [[UInt8]] in
            s.splitter.feed(bytes)
        }
        for f in frames {
            if case .dropped = continuation.yield(f) {
                let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
                    s.overflowed += 1
                    let met = s.waiters.filter { $0.value.count <= s.overflowed }
                    for k in met.keys { s.waiters[k] = nil }
                    return met.values.map(\.continuation)
                }
                for c in ready { c.resume() }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.withLock { if $0.closeReason == nil { $0.closeReason = "\(error)" } }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.withLock { if $0.closeReason == nil { $0.closeReason = "the port was closed (hangup)" } }
        continuation.finish()
    }
}

/// A one-way flag shared between an event-loop callback and the task awaiting it.
private final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
