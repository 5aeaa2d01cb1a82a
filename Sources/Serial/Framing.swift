/// How a byte stream from a serial device is cut into frames.
public enum Framing: Sendable, Equatable, CustomStringConvertible {
    /// Lines ending in LF; a CR before the LF is removed (LF or CRLF).
    case line
    /// Frames ending with `end`; with `start`, a frame begins after `start` and bytes outside
    /// start..end are dropped (e.g. STX ... ETX).
    case delimiter(end: [UInt8], start: [UInt8]?)
    /// Every `n` bytes are one frame.
    case fixed(Int)

    public var description: String {
        switch self {
        case .line: "line"
        case .delimiter(let end, let start): "delimiter \(start.map { "\(hex($0)).." } ?? "")\(hex(end))"
        case .fixed(let n): "fixed \(n) bytes"
        }
    }
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { b in
        let s = String(b, radix: 16, uppercase: true)
        return b < 16 ? "0" + s : s
    }.joined(separator: " ")
}

/// Cuts a byte stream into frames. Memory is bounded: a frame longer than `maxFrame` is dropped
/// (counted in ``oversized``) and the rest of it skipped up to the next delimiter; bytes outside
/// start..end frames are dropped and counted in ``droppedBytes``.
public struct FrameSplitter: Sendable {
    public let framing: Framing
    public let maxFrame: Int
    public private(set) var oversized = 0
    public private(set) var droppedBytes = 0
    private var buffer: [UInt8] = []
    /// Skipping the rest of an oversized frame.
    private var skipping = false
    /// Inside start..end (only with a start marker).
    private var inFrame = false

    public init(framing: Framing, maxFrame: Int) {
        self.framing = framing
        self.maxFrame = max(1, maxFrame)
        buffer.reserveCapacity(min(self.maxFrame, 4096))
    }

    /// Bytes buffered for the frame in progress (never more than `maxFrame` plus a delimiter).
    public var buffered: Int { buffer.count }

    /// Feeds bytes; returns the frames completed by them, in order.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        switch framing {
        case .fixed(let n):
            for b in bytes {
                buffer.append(b)
                if buffer.count == n {
                    frames.append(buffer)
                    buffer.removeAll(keepingCapacity: true)
                }
            }
        case .line:
            for b in bytes {
                if b == 0x0A {
                    if skipping {
                        skipping = false
                    } else {
                        if buffer.last == 0x0D { buffer.removeLast() }
                        frames.append(buffer)
                    }
                    buffer.removeAll(keepingCapacity: true)
                    continue
                }
                append(b)
            }
        case .delimiter(let end, let start):
            for b in bytes {
                if let start, !inFrame {
                    // Looking for the start marker; everything else is noise.
                    buffer.append(b)
                    if buffer.count > start.count { buffer.removeFirst(); droppedBytes += 1 }
                    if buffer == start {
                        buffer.removeAll(keepingCapacity: true)
                        inFrame = true
                    }
                    continue
                }
                append(b)
                if buffer.count >= end.count, buffer.suffix(end.count).elementsEqual(end) {
                    if skipping {
                        skipping = false
                    } else {
                        frames.append(Array(buffer.dropLast(end.count)))
                    }
                    buffer.removeAll(keepingCapacity: true)
                    inFrame = false
                }
            }
        }
        return frames
    }

    private mutating func append(_ b: UInt8) {
        if skipping {
            // Keep only what could be the start of the delimiter.
            buffer.append(b)
            let keep: Int
            if case .delimiter(let end, _) = framing { keep = end.count } else { keep = 1 }
            if buffer.count > keep { droppedBytes += buffer.count - keep; buffer.removeFirst(buffer.count - keep) }
            return
        }
        buffer.append(b)
        let limit: Int
        if case .delimiter(let end, _) = framing { limit = maxFrame + end.count } else { limit = maxFrame + 1 }
        if buffer.count > limit {
            oversized += 1
            droppedBytes += buffer.count
            buffer.removeAll(keepingCapacity: true)
            skipping = true
        }
    }
}
