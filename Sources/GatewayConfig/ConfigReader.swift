import LineSettings
import TOMLReader

#if canImport(Glibc)
import Glibc
#endif

// The reader gateway.toml is read through: typed getters that check ranges and report each
// problem with its key path and line, and a list of keys nobody read (unknown keys).

/// Collects issues from every reader, and notes on keys that are accepted but retired.
final class IssueSink {
    var issues: [ConfigIssue] = []
    var retiredKeys: [String] = []
}

/// Reads one TOML table, remembering which keys were used so that the rest can be reported.
final class Reader {
    let table: TOMLTable
    private(set) var path: String
    let parentPath: String
    let sink: IssueSink
    private var used: Set<String> = []

    init(_ table: TOMLTable, path: String, sink: IssueSink, parentPath: String = "") {
        self.table = table
        self.path = path
        self.sink = sink
        self.parentPath = parentPath
    }

    var keys: [String] { table.keys }

    func rename(_ p: String) { path = p }

    /// The table's required `name`: the path calls the table `<table>[name]` from here on, and
    /// the name must match [A-Za-z0-9_-]+ (`inTopics`: it is used in topics, and then none of
    /// ``ConfigLoader/reservedNames`` when `reserved`).
    func name(table: String, inTopics: Bool = true, reserved: Bool = false) -> String? {
        guard let name = string("name", required: true) else { return nil }
        rename("\(table)[\(name)]")
        if !ConfigLoader.isTopicSafe(name) { issue("name", "'\(name)' must match [A-Za-z0-9_-]+\(inTopics ? " (it is used in topics)" : "")") }
        if reserved && ConfigLoader.reservedNames.contains(name) { issue("name", "'\(name)' is reserved in topics") }
        return name
    }

    func key(_ k: String) -> String { path.isEmpty ? k : "\(path).\(k)" }

    /// An issue about key `k`, with the line it was written on (or the table's line).
    func issue(_ k: String, _ message: String) {
        let line = table.line(of: k) ?? (table.line > 0 ? table.line : nil)
        sink.issues.append(ConfigIssue(path: key(k), line: line, message: message))
    }

    func has(_ k: String) -> Bool { table.keys.contains(k) }

    /// A key an earlier release read and this one ignores: accepted (whatever its value), with a
    /// warning that `gateway check` prints and `gateway run` logs, so an old config still starts.
    func retired(_ k: String, _ message: String) {
        guard has(k) else { return }
        used.insert(k)
        let line = table.line(of: k).map { " (line \($0))" } ?? ""
        sink.retiredKeys.append("\(key(k))\(line): \(message)")
    }

    private func value(_ k: String, required: Bool) -> TOMLValue? {
        used.insert(k)
        guard let v = table[k] else {
            if required { issue(k, "missing (required)") }
            return nil
        }
        return v
    }

    func string(_ k: String, required: Bool = false) -> String? {
        guard let v = value(k, required: required) else { return nil }
        guard let s = v.string else { issue(k, "must be a string, not \(v.typeNameWithArticle)"); return nil }
        return s
    }

    /// A string, or a non-empty array of strings (`url = [...]`).
    func strings(_ k: String) -> [String]? {
        guard let v = value(k, required: false) else { return nil }
        if let s = v.string { return [s] }
        guard let a = v.array, !a.isEmpty, a.allSatisfy({ $0.string != nil }) else {
            issue(k, "must be a string or a non-empty array of strings, not \(v.typeNameWithArticle)")
            return nil
        }
        return a.compactMap(\.string)
    }

    /// The path of a file the gateway reads at start (a password or TLS file): an issue unless
    /// it can be read and is not a directory, so that `gateway check` refuses what `run` would.
    func readableFile(_ k: String, what: String) -> String? {
        guard let p = string(k) else { return nil }
        var st = stat()
        if access(p, R_OK) != 0 {
            issue(k, "cannot read '\(p)'")
        } else if stat(p, &st) == 0, st.st_mode & S_IFMT == S_IFDIR {
            issue(k, "'\(p)' is a directory, not \(what)")
        }
        return p
    }

    func int(_ k: String, _ range: ClosedRange<Int>? = nil, required: Bool = false) -> Int? {
        guard let v = value(k, required: required) else { return nil }
        guard let i64 = v.integer, let i = Int(exactly: i64) else { issue(k, "must be an integer, not \(v.typeNameWithArticle)"); return nil }
        if let range, !range.contains(i) { issue(k, "\(i) is outside \(range.lowerBound)...\(range.upperBound)"); return nil }
        return i
    }

    /// `baud`: one of ``BaudRate/supported`` (a Modbus bus or a serial device alike).
    func baud() -> Int? {
        guard let b = int("baud") else { return nil }
        guard BaudRate.isSupported(b) else { issue("baud", "\(b) is not a supported baud rate (\(BaudRate.supportedList))"); return nil }
        return b
    }

    /// `parity`: N, E or O, in either case.
    func parity() -> Parity? {
        guard let s = string("parity") else { return nil }
        guard let p = Parity(letter: s) else { issue("parity", "'\(s)' is not N, E or O"); return nil }
        return p
    }

    func double(_ k: String, required: Bool = false) -> Double? {
        guard let v = value(k, required: required) else { return nil }
        if let d = v.float { return d }
        if let i = v.integer { return Double(i) }
        issue(k, "must be a number, not \(v.typeNameWithArticle)")
        return nil
    }

    /// A bool, a number or a string (a value a command could carry).
    func scalar(_ k: String) -> ConfigScalar? {
        guard let v = value(k, required: false) else { return nil }
        if let b = v.boolean { return .bool(b) }
        if let i = v.integer { return .number(String(i)) }
        if let d = v.float, d.isFinite { return .number("\(d)") }
        if let s = v.string { return .text(s) }
        issue(k, "must be true/false, a number or a string, not \(v.typeNameWithArticle)")
        return nil
    }

    func bool(_ k: String, required: Bool = false) -> Bool? {
        guard let v = value(k, required: required) else { return nil }
        guard let b = v.boolean else { issue(k, "must be true or false, not \(v.typeNameWithArticle)"); return nil }
        return b
    }

    func enumeration<E: RawRepresentable & CaseIterable>(_ k: String, _ type: E.Type, required: Bool = false) -> E? where E.RawValue == String {
        guard let s = string(k, required: required) else { return nil }
        guard let e = E(rawValue: s) else {
            issue(k, "'\(s)' is not one of \(E.allCases.map { $0.rawValue }.joined(separator: ", "))")
            return nil
        }
        return e
    }

    func table(_ k: String, required: Bool = false) -> Reader? {
        guard let v = value(k, required: required) else { return nil }
        guard let t = v.table else { issue(k, "must be a table, not \(v.typeNameWithArticle)"); return nil }
        return Reader(t, path: key(k), sink: sink, parentPath: path)
    }

    /// `[[k]]`: an array of tables, each read with the path `k[index]` until renamed.
    func tables(_ k: String) -> [Reader] {
        guard let v = value(k, required: false) else { return [] }
        guard let a = v.array else { issue(k, "must be an array of tables ([[\(k)]])"); return [] }
        var out: [Reader] = []
        for (i, e) in a.enumerated() {
            guard let t = e.table else { issue("\(k)[\(i)]", "must be a table"); continue }
            out.append(Reader(t, path: key("\(k)[\(i)]"), sink: sink, parentPath: path))
        }
        return out
    }

    /// Reports keys that were never read.
    /// A string of bytes with escapes (see ``ByteEscapes.decode(_:)``).
    func bytes(_ k: String, required: Bool = false) -> [UInt8]? {
        guard let s = string(k, required: required) else { return nil }
        switch ByteEscapes.decode(s) {
        case .success(let b): return b
        case .failure(let e): issue(k, "\(e)"); return nil
        }
    }

    func finish() {
        for k in table.keys.sorted() where !used.contains(k) {
            issue(k, "unknown key")
        }
    }
}
