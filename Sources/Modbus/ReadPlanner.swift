/// One item a device must read: a point's table, first address and width.
public struct ReadItem: Sendable, Equatable, Hashable {
    /// Caller's identifier (e.g. the point's index).
    public var id: Int
    public var kind: RegisterKind
    public var address: Int
    /// Bits for coil/discrete, registers for holding/input.
    public var count: Int

    public init(id: Int, kind: RegisterKind, address: Int, count: Int) {
        self.id = id
        self.kind = kind
        self.address = address
        self.count = count
    }

    var end: Int { address + count }
}

/// One Modbus read request of a plan, and the items it serves.
public struct ReadRequest: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var kind: RegisterKind
    public var address: Int
    public var count: Int
    public var items: [ReadItem]

    public var description: String {
        let fc = switch kind { case .coil: 1; case .discrete: 2; case .holding: 3; case .input: 4 }
        return "FC\(fc) \(kind) \(address)..\(address + count - 1) (\(count))"
    }
}

/// How far the planner may bridge unused addresses to save a request.
public struct GapPolicy: Sendable, Equatable {
    /// Largest run of unused registers read to join two ranges.
    public var maxRegisterGap: Int
    /// Largest run of unused bits read to join two ranges.
    public var maxBitGap: Int

    public init(maxRegisterGap: Int, maxBitGap: Int) {
        self.maxRegisterGap = maxRegisterGap
        self.maxBitGap = maxBitGap
    }

    /// TCP: a request costs a round trip, extra registers are nearly free.
    public static let tcp = GapPolicy(maxRegisterGap: 32, maxBitGap: 256)
    /// RTU: every register costs wire time (about 2 ms at 9600 baud); bridge only small gaps.
    public static let rtu = GapPolicy(maxRegisterGap: 4, maxBitGap: 32)
    /// Never bridge: exactly the addresses asked for.
    public static let none = GapPolicy(maxRegisterGap: 0, maxBitGap: 0)

    func maxGap(_ kind: RegisterKind) -> Int { kind.isBit ? maxBitGap : maxRegisterGap }
}

/// Plans the fewest read requests for one device's items, within Modbus limits (125 registers,
/// 2000 bits per read), bridging gaps up to the ``GapPolicy``.
///
/// When a device answers a merged read with ILLEGAL DATA ADDRESS (a hole in its map), call
/// ``split(_:)``: the request is replaced by requests that read only the items' own addresses,
/// and the plan remembers it.
public struct ReadPlan: Sendable, Equatable {
    public private(set) var requests: [ReadRequest]
    public let gaps: GapPolicy

    public init(items: [ReadItem], gaps: GapPolicy) {
        self.gaps = gaps
        self.requests = Self.plan(items, gaps: gaps)
    }

    /// Items are grouped per table, sorted by address, and merged greedily: the next item joins
    /// the current request when the gap is within policy and the request stays within the limit.
    static func plan(_ items: [ReadItem], gaps: GapPolicy) -> [ReadRequest] {
        var out: [ReadRequest] = []
        for kind in RegisterKind.allCases {
            let sorted = items.filter { $0.kind == kind }.sorted { ($0.address, $0.count) < ($1.address, $1.count) }
            var current: ReadRequest?
            for item in sorted {
                if var c = current {
                    let end = c.address + c.count
                    let newEnd = max(end, item.end)
                    if item.address - end <= gaps.maxGap(kind), newEnd - c.address <= kind.maxReadCount {
                        c.count = newEnd - c.address
                        c.items.append(item)
                        current = c
                        continue
                    }
                    out.append(c)
                }
                current = ReadRequest(kind: kind, address: item.address, count: item.count, items: [item])
            }
            if let c = current { out.append(c) }
        }
        return out
    }

    /// Replaces `request` by requests without bridged gaps (items that overlap or touch stay
    /// together). Returns false when it cannot be split further (one contiguous run): then one of
    /// its own items is the bad address, and the items must be read one by one.
    @discardableResult
    public mutating func split(_ request: ReadRequest) -> Bool {
        guard let i = requests.firstIndex(of: request) else { return false }
        var parts = Self.plan(request.items, gaps: .none)
        if parts.count == 1 {
            // Contiguous: fall back to one request per item.
            guard request.items.count > 1 else { return false }
            parts = request.items.sorted { $0.address < $1.address }.map {
                ReadRequest(kind: $0.kind, address: $0.address, count: $0.count, items: [$0])
            }
        }
        requests.replaceSubrange(i...i, with: parts)
        return true
    }
}
