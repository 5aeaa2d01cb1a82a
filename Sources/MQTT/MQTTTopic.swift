/// Topic name and topic filter rules (MQTT 4.7).
public enum MQTTTopic {
    /// A topic name for PUBLISH: non-empty, no wildcards, valid MQTT string.
    public static func isValidName(_ topic: String) -> Bool {
        !topic.isEmpty && MQTTString.isValid(topic) && !topic.utf8.contains(UInt8(ascii: "+")) && !topic.utf8.contains(UInt8(ascii: "#"))
    }

    /// A topic filter for SUBSCRIBE: `+` fills a whole level, `#` is the whole last level.
    /// Shared subscriptions (`$share/group/filter`) are accepted.
    public static func isValidFilter(_ filter: String) -> Bool {
        guard !filter.isEmpty, MQTTString.isValid(filter) else { return false }
        var f = Substring(filter)
        if f.hasPrefix("$share/") {
            let rest = f.dropFirst(7)
            guard let slash = rest.firstIndex(of: "/") else { return false }
            let group = rest[..<slash]
            guard !group.isEmpty, !group.contains("+"), !group.contains("#") else { return false }
            f = rest[rest.index(after: slash)...]
            guard !f.isEmpty else { return false }
        }
        let levels = f.split(separator: "/", omittingEmptySubsequences: false)
        for (i, level) in levels.enumerated() {
            if level.contains("#") {
                guard level == "#", i == levels.count - 1 else { return false }
            }
            if level.contains("+") {
                guard level == "+" else { return false }
            }
        }
        return true
    }

    /// True when `topic` matches `filter`. Topics starting with `$` are not matched by a filter that
    /// starts with a wildcard (4.7.2).
    public static func matches(topic: String, filter: String) -> Bool {
        var filter = Substring(filter)
        if filter.hasPrefix("$share/") {
            let rest = filter.dropFirst(7)
            guard let slash = rest.firstIndex(of: "/") else { return false }
            filter = rest[rest.index(after: slash)...]
        }
        if topic.hasPrefix("$") && (filter.hasPrefix("+") || filter.hasPrefix("#")) { return false }
        let t = topic.split(separator: "/", omittingEmptySubsequences: false)
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        var i = 0
        while i < f.count {
            if f[i] == "#" { return true }
            guard i < t.count else { return false }
            if f[i] != "+" && f[i] != t[i] { return false }
            i += 1
        }
        return i == t.count
    }
}
