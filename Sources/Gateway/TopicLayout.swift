/// Every topic the gateway publishes or listens to, named once (as Neuron names its
/// `write_req_topic` / `write_resp_topic`): the runtime, the commanders, the serial runners and
/// ``GatewayPlan/publishedTopics`` all build them here.
///
/// ```
/// <base>/status                          online / offline (birth, will)
/// <base>/<device>/status                 online / offline from poll health
/// <base>/<device>/<point>                values
/// <base>/<device>/raw                    unmatched serial frames
/// <base>/<device>/<point>/set            commands in        -> <point>/set/result answers out
/// <base>/<device>/<point>/get            read-now requests in
/// <base>/<device>/<point>/event          counter increments, latches seen set
/// <base>/failsafe                        what the fail-safe wrote while the broker was away
/// ```
public struct TopicLayout: Sendable, Equatable {
    public let base: String

    public init(base: String) { self.base = base }

    /// The gateway's own status (birth `online`, will `offline`).
    public var status: String { "\(base)/status" }
    public func status(_ device: String) -> String { "\(base)/\(device)/status" }
    public func value(device: String, point: String) -> String { "\(base)/\(device)/\(point)" }
    public func raw(device: String) -> String { "\(base)/\(device)/raw" }
    /// Where a point's (or serial command's) commands come in.
    public func set(device: String, point: String) -> String { "\(base)/\(device)/\(point)/set" }
    public func setResult(device: String, point: String) -> String { "\(base)/\(device)/\(point)/set/result" }
    public func event(device: String, point: String) -> String { "\(base)/\(device)/\(point)/event" }
    /// The report of fail-safe writes, published when the broker is back.
    public var failsafe: String { "\(base)/failsafe" }

    /// The filters the gateway subscribes to for commands.
    public var commandFilters: [String] { ["\(base)/+/+/set", "\(base)/+/+/get"] }

    /// The command a topic carries, or nil when it is not one of ours.
    public func parse(_ topic: String) -> CommandTopic? {
        // Bytes, as the broker matched them (String's prefix test compares by Unicode
        // equivalence and costs many times as much; every command is parsed on its way in).
        let t = topic.utf8, b = base.utf8
        guard t.count > b.count, t.starts(with: b) else { return nil }
        var i = t.index(t.startIndex, offsetBy: b.count)
        guard t[i] == UInt8(ascii: "/") else { return nil }
        i = t.index(after: i)
        // Exactly three non-empty levels after the base: device, point, kind.
        guard let s1 = t[i...].firstIndex(of: UInt8(ascii: "/")), s1 != i else { return nil }
        let p = t.index(after: s1)
        guard let s2 = t[p...].firstIndex(of: UInt8(ascii: "/")), s2 != p else { return nil }
        let k = t[t.index(after: s2)...]
        let kind: CommandTopic.Kind
        if k.elementsEqual("set".utf8) { kind = .set } else if k.elementsEqual("get".utf8) { kind = .get } else { return nil }
        return CommandTopic(device: String(decoding: t[i..<s1], as: UTF8.self), point: String(decoding: t[p..<s2], as: UTF8.self), kind: kind)
    }
}

/// `<base>/<device>/<point>/set` or `/get`, taken apart.
public struct CommandTopic: Sendable, Equatable {
    public enum Kind: String, Sendable { case set, get }
    public var device: String
    public var point: String
    public var kind: Kind
}
