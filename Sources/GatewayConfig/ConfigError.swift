/// One problem in `gateway.toml`: the key path (`device[front-door].point[unlock].address`), the
/// line when the parser gives one, and what is wrong.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int?
    public var message: String
    /// The file the problem is in when it is not the one being loaded (a device profile).
    public var file: String?

    public init(path: String, line: Int? = nil, message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    /// `line 14: device[d].point[p].address: 70000 is outside 0...65535`
    public var description: String {
        let at = line.map { "line \($0): " } ?? ""
        return path.isEmpty ? "\(at)\(message)" : "\(at)\(path): \(message)"
    }
}

/// Every problem found in a configuration file, all at once.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var issues: [ConfigIssue]

    /// One line per issue, compiler style: `gateway.toml:14: device[d].point[p].address: ...`.
    public var description: String {
        issues.map { issue in
            let at = issue.line.map { ":\($0)" } ?? ""
            let file = issue.file ?? self.file
            return issue.path.isEmpty ? "\(file)\(at): \(issue.message)" : "\(file)\(at): \(issue.path): \(issue.message)"
        }.joined(separator: "\n")
    }
}
