/// One problem in `gateway.toml`: the key path (`device[front-door].point[unlock].address`), the
/// line when the parser gives one, and what is wrong.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int?
    public var message: String

    public init(path: String, line: Int? = nil, message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    public var description: String {
        let at = line.map { " (line \($0))" } ?? ""
        return path.isEmpty ? "\(message)\(at)" : "\(path)\(at): \(message)"
    }
}

/// Every problem found in a configuration file, all at once.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var issues: [ConfigIssue]

    public var description: String {
        issues.map { "\(file): \($0)" }.joined(separator: "\n")
    }
}
