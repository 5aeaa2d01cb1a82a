/// A TOML 1.0 reader of our own: `gateway.toml` text -> plain values, with the line of every key.
///
/// Why not TOMLKit: it brings full Foundation and ICU into the process (about 6 MiB of resident
/// memory in `gateway run`, which uses nothing else of them) plus a C++ parser. This reader needs
/// only the standard library, and it gives a line number for every key, not only for syntax
/// errors. Date-times are recognised and validated but kept as written (the gateway has no
/// date-time settings).

/// A TOML value.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)
    /// `1979-05-27T07:32:00Z`, `1979-05-27T07:32:00`, `1979-05-27`, `07:32:00`, as written.
    case dateTime(String, DateTimeKind)
    case array([TOMLValue])
    case table(TOMLTable)

    public enum DateTimeKind: String, Sendable {
        case offsetDateTime = "offset date-time", localDateTime = "local date-time", localDate = "local date", localTime = "local time"
    }

    /// The type with its article, for messages: "a string", "an integer", ...
    public var typeNameWithArticle: String {
        let n = typeName
        return (n.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + n
    }

    /// The type's name for messages: "string", "integer", ...
    public var typeName: String {
        switch self {
        case .string: "string"
        case .integer: "integer"
        case .float: "float"
        case .boolean: "boolean"
        case .dateTime(_, let k): k.rawValue
        case .array: "array"
        case .table: "table"
        }
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var integer: Int64? { if case .integer(let i) = self { i } else { nil } }
    public var float: Double? { if case .float(let d) = self { d } else { nil } }
    public var boolean: Bool? { if case .boolean(let b) = self { b } else { nil } }
    public var array: [TOMLValue]? { if case .array(let a) = self { a } else { nil } }
    public var table: TOMLTable? { if case .table(let t) = self { t } else { nil } }
}

/// A table: keys in the order written, each with the line it was written on.
public struct TOMLTable: Sendable, Equatable {
    public private(set) var keys: [String] = []
    private var values: [String: TOMLValue] = [:]
    private var lines: [String: Int] = [:]
    /// The line of the table's header (`[bus]`), or of its first key; 0 for the root and for
    /// tables that were only named on the way to another (`a` in `[a.b]`).
    public internal(set) var line: Int

    public init(line: Int = 0) { self.line = line }

    public subscript(key: String) -> TOMLValue? { values[key] }

    /// The line `key` was written on.
    public func line(of key: String) -> Int? { lines[key] }

    mutating func set(_ key: String, _ value: TOMLValue, line: Int) {
        if values.updateValue(value, forKey: key) == nil { keys.append(key) }
        if lines[key] == nil { lines[key] = line }
    }
}

/// A syntax error or a TOML rule broken (a key defined twice, ...), with its place.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var message: String
    public var description: String { "\(message) (line \(line), column \(column))" }

    public init(line: Int, column: Int, message: String) {
        self.line = line
        self.column = column
        self.message = message
    }
}

public enum TOML {
    /// Parses a whole document.
    public static func parse(_ text: String) throws(TOMLError) -> TOMLTable {
        var parser = TOMLParser(Array(text.utf8))
        return try parser.document()
    }

    /// Parses bytes; they must be UTF-8.
    public static func parse(bytes: [UInt8]) throws(TOMLError) -> TOMLTable {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            var line = 1
            // Report the line of the first byte that is not valid UTF-8.
            var i = 0
            while i < bytes.count {
                let n = utf8SequenceLength(bytes, i)
                if n == 0 { break }
                if bytes[i] == 0x0A { line += 1 }
                i += n
            }
            throw TOMLError(line: line, column: 1, message: "the file is not valid UTF-8")
        }
        return try parse(text)
    }

    /// Length of the valid UTF-8 sequence at `i`, or 0.
    static func utf8SequenceLength(_ b: [UInt8], _ i: Int) -> Int {
        let end = min(b.count, i + 4)
        for n in 1...4 where i + n <= end {
            if String(validating: b[i..<(i + n)], as: UTF8.self) != nil { return n }
        }
        return 0
    }
}

// MARK: - Building the document

/// The tree while it is being built: tables are shared references so headers can reopen them.
private final class TableNode {
    enum Kind: Equatable {
        /// Named on the way to another table (`a` in `[a.b]`); a header may still define it once.
        case implicit
        /// Defined by a header, or an element of an array of tables.
        case explicit
        /// Created by dotted keys in section `n`; only that section's dotted keys may add to it.
        case dotted(section: Int)
    }

    enum Entry {
        case value(TOMLValue)
        case table(TableNode)
        case tableArray([TableNode])
    }

    var kind: Kind
    var line: Int
    var order: [String] = []
    var entries: [String: Entry] = [:]
    var lines: [String: Int] = [:]

    init(kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
    }

    func put(_ key: String, _ entry: Entry, line: Int) {
        if entries.updateValue(entry, forKey: key) == nil {
            order.append(key)
            lines[key] = line
        }
    }

    func freeze() -> TOMLTable {
        var t = TOMLTable(line: line)
        for k in order {
            let line = lines[k] ?? 0
            switch entries[k]! {
            case .value(let v): t.set(k, v, line: line)
            case .table(let n): t.set(k, .table(n.freeze()), line: line)
            case .tableArray(let a): t.set(k, .array(a.map { .table($0.freeze()) }), line: line)
            }
        }
        return t
    }
}

private struct TOMLParser {
    let s: [UInt8]
    var i = 0
    var line = 1
    /// The section (the keys after one header, or inside one inline table) being read: dotted
    /// keys may only add to tables that dotted keys of the same section made.
    var section = 0
    var sectionCounter = 0

    init(_ bytes: [UInt8]) { s = bytes }

    // MARK: errors and bytes

    func error(_ message: String, at index: Int? = nil) -> TOMLError {
        let at = index ?? i
        // Column in characters, counted from the line start.
        var start = at
        while start > 0 && s[start - 1] != 0x0A { start -= 1 }
        let lineNo = s[0..<start].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 }
        let col = String(decoding: s[start..<min(at, s.count)], as: UTF8.self).count + 1
        return TOMLError(line: lineNo, column: col, message: message)
    }

    var atEnd: Bool { i >= s.count }
    var peek: UInt8? { i < s.count ? s[i] : nil }
    func peek(_ offset: Int) -> UInt8? { i + offset < s.count ? s[i + offset] : nil }

    static func describe(_ c: UInt8?) -> String {
        guard let c else { return "the end of the file" }
        switch c {
        case 0x0A: return "a line end"
        case 0x0D: return "a carriage return"
        case 0x20...0x7E: return "'\(Character(Unicode.Scalar(c)))'"
        default: return "byte 0x" + String(c, radix: 16, uppercase: true)
        }
    }

    mutating func skipSpaces() {
        while let c = peek, c == 0x20 || c == 0x09 { i += 1 }
    }

    /// A comment (control characters other than tab are not allowed in it).
    mutating func skipComment() throws(TOMLError) {
        guard peek == UInt8(ascii: "#") else { return }
        i += 1
        while let c = peek, c != 0x0A {
            if c == 0x0D && peek(1) == 0x0A { break }
            if (c < 0x20 && c != 0x09) || c == 0x7F { throw error("control character \(Self.describe(c)) in a comment") }
            i += 1
        }
    }

    /// A line end (LF or CRLF) or the end of the file.
    mutating func lineEnd() throws(TOMLError) {
        skipSpaces()
        try skipComment()
        guard let c = peek else { return }
        if c == 0x0A { i += 1; line += 1; return }
        if c == 0x0D && peek(1) == 0x0A { i += 2; line += 1; return }
        throw error("expected the end of the line, found \(Self.describe(c))")
    }

    /// Whitespace, comments and newlines (inside arrays).
    mutating func skipBlank() throws(TOMLError) {
        while true {
            skipSpaces()
            try skipComment()
            if peek == 0x0A { i += 1; line += 1; continue }
            if peek == 0x0D && peek(1) == 0x0A { i += 2; line += 1; continue }
            return
        }
    }

    // MARK: document

    mutating func document() throws(TOMLError) -> TOMLTable {
        if s.starts(with: [0xEF, 0xBB, 0xBF]) { i = 3 }   // a byte order mark
        let root = TableNode(kind: .explicit, line: 0)
        var current = root
        while !atEnd {
            try skipBlank()
            guard let c = peek else { break }
            if c == UInt8(ascii: "[") {
                sectionCounter += 1
                section = sectionCounter
                current = try header(root)
            } else {
                try keyValue(into: current)
            }
            try lineEnd()
        }
        return root.freeze()
    }

    /// `[a.b]` or `[[a.b]]`: returns the table that the following keys go to.
    mutating func header(_ root: TableNode) throws(TOMLError) -> TableNode {
        let start = i
        let headerLine = line
        let isArray = peek(1) == UInt8(ascii: "[")
        i += isArray ? 2 : 1
        skipSpaces()
        let path = try key()
        skipSpaces()
        if isArray {
            guard peek == UInt8(ascii: "]"), peek(1) == UInt8(ascii: "]") else { throw error("expected ']]' to close the array of tables header") }
            i += 2
        } else {
            guard peek == UInt8(ascii: "]") else { throw error("expected ']' to close the table header, found \(Self.describe(peek))") }
            i += 1
        }
        let name = path.map(\.name).joined(separator: ".")
        var node = root
        for part in path.dropLast() {
            switch node.entries[part.name] {
            case nil:
                let t = TableNode(kind: .implicit, line: 0)
                node.put(part.name, .table(t), line: headerLine)
                node = t
            case .table(let t): node = t
            case .tableArray(let a): node = a[a.count - 1]
            case .value(let v):
                throw error("[\(name)]: '\(part.name)' is already \(v.typeNameWithArticle)" + (v.table != nil ? " (inline tables cannot be extended)" : ""), at: start)
            }
        }
        let last = path[path.count - 1].name
        if isArray {
            let element = TableNode(kind: .explicit, line: headerLine)
            switch node.entries[last] {
            case nil: node.put(last, .tableArray([element]), line: headerLine)
            case .tableArray(let a): node.entries[last] = .tableArray(a + [element])
            case .table: throw error("[[\(name)]]: '\(name)' is already a table, not an array of tables", at: start)
            case .value(let v): throw error("[[\(name)]]: '\(name)' is already \(v.typeNameWithArticle)", at: start)
            }
            return element
        }
        switch node.entries[last] {
        case nil:
            let t = TableNode(kind: .explicit, line: headerLine)
            node.put(last, .table(t), line: headerLine)
            return t
        case .table(let t):
            guard t.kind == .implicit else { throw error("[\(name)] is defined twice", at: start) }
            t.kind = .explicit
            t.line = headerLine
            return t
        case .tableArray: throw error("[\(name)]: '\(name)' is already an array of tables", at: start)
        case .value(let v): throw error("[\(name)]: '\(name)' is already \(v.typeNameWithArticle)", at: start)
        }
    }

    /// `a.b = value` into `table`.
    mutating func keyValue(into table: TableNode) throws(TOMLError) {
        let start = i
        let keyLine = line
        let mySection = section
        let path = try key()
        skipSpaces()
        guard peek == UInt8(ascii: "=") else { throw error("expected '=' after the key, found \(Self.describe(peek))") }
        i += 1
        skipSpaces()
        let v = try value()
        var node = table
        for part in path.dropLast() {
            switch node.entries[part.name] {
            case nil:
                let t = TableNode(kind: .dotted(section: mySection), line: keyLine)
                node.put(part.name, .table(t), line: keyLine)
                node = t
            case .table(let t):
                guard t.kind == .implicit || t.kind == .dotted(section: mySection) else {
                    throw error("'\(part.name)' is a table defined elsewhere; dotted keys cannot add to it", at: start)
                }
                // Dotted keys define the table: no header may define it again later.
                t.kind = .dotted(section: mySection)
                node = t
            case .tableArray: throw error("'\(part.name)' is an array of tables; dotted keys cannot add to it", at: start)
            case .value(let v): throw error("'\(part.name)' is already \(v.typeNameWithArticle)", at: start)
            }
        }
        let last = path[path.count - 1].name
        guard node.entries[last] == nil else { throw error("'\(path.map(\.name).joined(separator: "."))' is defined twice", at: start) }
        node.put(last, .value(v), line: keyLine)
    }

    // MARK: keys

    struct KeyPart { var name: String }

    /// A bare, quoted or dotted key.
    mutating func key() throws(TOMLError) -> [KeyPart] {
        var parts: [KeyPart] = []
        while true {
            skipSpaces()
            guard let c = peek else { throw error("expected a key, found the end of the file") }
            if c == UInt8(ascii: "\"") {
                if peek(1) == UInt8(ascii: "\""), peek(2) == UInt8(ascii: "\"") { throw error("a key cannot be a multi-line string") }
                parts.append(KeyPart(name: try basicString()))
            } else if c == UInt8(ascii: "'") {
                if peek(1) == UInt8(ascii: "'"), peek(2) == UInt8(ascii: "'") { throw error("a key cannot be a multi-line string") }
                parts.append(KeyPart(name: try literalString()))
            } else if Self.isBare(c) {
                let b = i
                while let c = peek, Self.isBare(c) { i += 1 }
                parts.append(KeyPart(name: String(decoding: s[b..<i], as: UTF8.self)))
            } else {
                throw error("expected a key, found \(Self.describe(c))")
            }
            skipSpaces()
            guard peek == UInt8(ascii: ".") else { return parts }
            i += 1
        }
    }

    static func isBare(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
    }

    // MARK: values

    mutating func value() throws(TOMLError) -> TOMLValue {
        guard let c = peek else { throw error("expected a value, found the end of the file") }
        switch c {
        case UInt8(ascii: "\""):
            if peek(1) == UInt8(ascii: "\""), peek(2) == UInt8(ascii: "\"") { return .string(try multilineString(quote: UInt8(ascii: "\""))) }
            return .string(try basicString())
        case UInt8(ascii: "'"):
            if peek(1) == UInt8(ascii: "'"), peek(2) == UInt8(ascii: "'") { return .string(try multilineString(quote: UInt8(ascii: "'"))) }
            return .string(try literalString())
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "{"): return try inlineTable()
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if s[i...].starts(with: Array("true".utf8)) { i += 4; return try endOfScalar(.boolean(true)) }
            if s[i...].starts(with: Array("false".utf8)) { i += 5; return try endOfScalar(.boolean(false)) }
            throw error("expected a value (true, false, a number, a string, an array or an inline table)")
        default:
            return try numberOrDate()
        }
    }

    /// After a bare scalar only a separator may follow.
    mutating func endOfScalar(_ v: TOMLValue) throws(TOMLError) -> TOMLValue {
        if let c = peek, !(c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == UInt8(ascii: "#") || c == UInt8(ascii: ",")
                           || c == UInt8(ascii: "]") || c == UInt8(ascii: "}")) {
            throw error("unexpected \(Self.describe(c)) after the value")
        }
        return v
    }

    mutating func array() throws(TOMLError) -> TOMLValue {
        i += 1
        var items: [TOMLValue] = []
        while true {
            try skipBlank()
            if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
            items.append(try value())
            try skipBlank()
            if peek == UInt8(ascii: ",") { i += 1; continue }
            if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw error("expected ',' or ']' in the array, found \(Self.describe(peek))")
        }
    }

    mutating func inlineTable() throws(TOMLError) -> TOMLValue {
        i += 1
        let node = TableNode(kind: .explicit, line: line)
        // Dotted keys inside an inline table may only add to tables made in this inline table.
        let outer = section
        sectionCounter += 1
        let mine = sectionCounter
        defer { section = outer }
        skipSpaces()
        if peek == UInt8(ascii: "}") { i += 1; return .table(node.freeze()) }
        while true {
            skipSpaces()
            section = mine
            try keyValue(into: node)
            skipSpaces()
            if peek == UInt8(ascii: ",") {
                i += 1
                skipSpaces()
                if peek == UInt8(ascii: "}") { throw error("a trailing comma is not allowed in an inline table") }
                continue
            }
            if peek == UInt8(ascii: "}") { i += 1; return .table(node.freeze()) }
            throw error("expected ',' or '}' in the inline table, found \(Self.describe(peek))" + (peek == 0x0A || peek == 0x0D ? " (inline tables are one line)" : ""))
        }
    }

    // MARK: strings

    /// Appends the character at `i` (validated: no control characters but tab).
    mutating func plainCharacter(into out: inout [UInt8], multiline: Bool) throws(TOMLError) {
        let c = s[i]
        if c == 0x0A {
            guard multiline else { throw error("a line end inside a string (use a multi-line string \"\"\"...\"\"\")") }
            out.append(c); i += 1; line += 1; return
        }
        if c == 0x0D {
            guard multiline, peek(1) == 0x0A else { throw error("a carriage return inside a string") }
            out.append(0x0A); i += 2; line += 1; return
        }
        if (c < 0x20 && c != 0x09) || c == 0x7F { throw error("control character \(Self.describe(c)) inside a string (write it as an escape)") }
        out.append(c)
        i += 1
    }

    mutating func basicString() throws(TOMLError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw error("the string is not closed") }
            if c == UInt8(ascii: "\"") { i += 1; return String(decoding: out, as: UTF8.self) }
            if c == UInt8(ascii: "\\") { try escape(into: &out); continue }
            try plainCharacter(into: &out, multiline: false)
        }
    }

    /// `"""..."""` (with escapes) or `'''...'''` (without), after the opening quotes; a line
    /// end right after them is not part of the string.
    mutating func multilineString(quote: UInt8) throws(TOMLError) -> String {
        i += 3
        var out: [UInt8] = []
        if peek == 0x0A { i += 1; line += 1 } else if peek == 0x0D, peek(1) == 0x0A { i += 2; line += 1 }
        while true {
            guard let c = peek else { throw error("the multi-line string is not closed") }
            if c == quote {
                // Up to two quotes may stand right before the closing three.
                var n = 0
                while peek(n) == quote { n += 1 }
                if n >= 3 {
                    guard n <= 5 else { throw error("too many quotes at the end of a multi-line string") }
                    out += Array(repeating: quote, count: n - 3)
                    i += n
                    return String(decoding: out, as: UTF8.self)
                }
                out += Array(repeating: quote, count: n)
                i += n
                continue
            }
            if c == UInt8(ascii: "\\"), quote == UInt8(ascii: "\"") {
                // A backslash at the end of a line trims the line end and the blanks after it.
                var j = i + 1
                while j < s.count, s[j] == 0x20 || s[j] == 0x09 { j += 1 }
                if j < s.count, s[j] == 0x0A || (s[j] == 0x0D && j + 1 < s.count && s[j + 1] == 0x0A) {
                    i = j
                    while let c = peek {
                        if c == 0x20 || c == 0x09 { i += 1 } else if c == 0x0A { i += 1; line += 1 } else if c == 0x0D, peek(1) == 0x0A { i += 2; line += 1 } else { break }
                    }
                    continue
                }
                try escape(into: &out)
                continue
            }
            try plainCharacter(into: &out, multiline: true)
        }
    }

    mutating func escape(into out: inout [UInt8]) throws(TOMLError) {
        let at = i
        i += 1
        guard let c = peek else { throw error("the string is not closed") }
        i += 1
        switch c {
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5C)
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let n = c == UInt8(ascii: "u") ? 4 : 8
            guard i + n <= s.count else { throw error("\\\(Character(Unicode.Scalar(c))) needs \(n) hex digits", at: at) }
            var v: UInt32 = 0
            for k in 0..<n {
                guard let d = Self.hexDigit(s[i + k]) else { throw error("\\\(Character(Unicode.Scalar(c))) needs \(n) hex digits", at: at) }
                v = v << 4 | UInt32(d)
            }
            i += n
            guard let scalar = Unicode.Scalar(v) else { throw error("\\\(Character(Unicode.Scalar(c)))\(String(v, radix: 16)) is not a Unicode scalar value", at: at) }
            out += Array(String(Character(scalar)).utf8)
        default:
            throw error("invalid escape \\\(Self.describe(c).trimmingQuotes) (allowed: \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX \\UXXXXXXXX; in a literal string '...' a backslash is a backslash)", at: at)
        }
    }

    static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x41...0x46: c - 0x41 + 10
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }

    mutating func literalString() throws(TOMLError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw error("the string is not closed") }
            if c == UInt8(ascii: "'") { i += 1; return String(decoding: out, as: UTF8.self) }
            try plainCharacter(into: &out, multiline: false)
        }
    }

    // MARK: numbers and date-times

    mutating func numberOrDate() throws(TOMLError) -> TOMLValue {
        let start = i
        // The token: everything up to a separator (a date-time may contain one space before its time).
        var end = i
        while end < s.count, Self.isTokenByte(s[end]) { end += 1 }
        let token = Array(s[start..<end])
        guard !token.isEmpty else { throw error("expected a value, found \(Self.describe(peek))") }
        if Self.looksLikeDate(token) || Self.looksLikeTime(token) {
            var text = token
            // `1979-05-27 07:32:00`: a space between date and time.
            if token.count == 10, end + 1 < s.count, s[end] == 0x20, Self.isDigit(s[end + 1]) {
                var e2 = end + 1
                while e2 < s.count, Self.isTokenByte(s[e2]) { e2 += 1 }
                let time = Array(s[(end + 1)..<e2])
                if Self.looksLikeTime(time) {
                    text = token + [UInt8(ascii: "T")] + time
                    end = e2
                }
            }
            guard let kind = Self.dateTimeKind(text) else {
                throw error("'\(String(decoding: s[start..<end], as: UTF8.self))' is not a valid date or time", at: start)
            }
            i = end
            return .dateTime(String(decoding: s[start..<end], as: UTF8.self), kind)
        }
        i = end
        if let v = Self.integer(token) { return .integer(v) }
        if let v = Self.float(token) { return .float(v) }
        let text = String(decoding: token, as: UTF8.self)
        if Self.integerShape(token) {
            let body = token.drop { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") }
            if body.count > 1 && body.first == UInt8(ascii: "0") { throw error("\(text): leading zeros are not allowed", at: start) }
            throw error("integer \(text) does not fit in 64 bits", at: start)
        }
        throw error("'\(text)' is not a valid value (strings need quotes)", at: start)
    }

    static func isTokenByte(_ c: UInt8) -> Bool {
        !(c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == UInt8(ascii: "#") || c == UInt8(ascii: ",")
          || c == UInt8(ascii: "]") || c == UInt8(ascii: "}") || c == UInt8(ascii: "[") || c == UInt8(ascii: "{")
          || c == UInt8(ascii: "=") || c == UInt8(ascii: "\"") || c == UInt8(ascii: "'"))
    }

    static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

    static func looksLikeDate(_ t: [UInt8]) -> Bool {
        t.count >= 10 && t[0..<4].allSatisfy(isDigit) && t[4] == UInt8(ascii: "-")
    }

    static func looksLikeTime(_ t: [UInt8]) -> Bool {
        t.count >= 5 && isDigit(t[0]) && isDigit(t[1]) && t[2] == UInt8(ascii: ":")
    }

    /// Validates `YYYY-MM-DD`, `HH:MM:SS[.frac]`, their `T` combination and an offset.
    static func dateTimeKind(_ t: [UInt8]) -> TOMLValue.DateTimeKind? {
        func num(_ r: Range<Int>) -> Int? {
            guard r.upperBound <= t.count, t[r].allSatisfy(isDigit) else { return nil }
            return t[r].reduce(0) { $0 * 10 + Int($1 - 0x30) }
        }
        func time(from p: Int) -> Int? {   // returns the index after the time
            guard let h = num(p..<(p + 2)), p + 2 < t.count, t[p + 2] == UInt8(ascii: ":"), let m = num((p + 3)..<(p + 5)),
                  p + 5 < t.count, t[p + 5] == UInt8(ascii: ":"), let sec = num((p + 6)..<(p + 8)),
                  h <= 23, m <= 59, sec <= 59 else { return nil }
            var q = p + 8
            if q < t.count, t[q] == UInt8(ascii: ".") {
                q += 1
                let f = q
                while q < t.count, isDigit(t[q]) { q += 1 }
                if q == f { return nil }
            }
            return q
        }
        if looksLikeTime(t) {
            guard let end = time(from: 0), end == t.count else { return nil }
            return .localTime
        }
        guard let y = num(0..<4), t.count >= 10, t[4] == UInt8(ascii: "-"), let mo = num(5..<7), t[7] == UInt8(ascii: "-"),
              let d = num(8..<10), (1...12).contains(mo), d >= 1 else { return nil }
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1]
        guard d <= days else { return nil }
        if t.count == 10 { return .localDate }
        guard t[10] == UInt8(ascii: "T") || t[10] == UInt8(ascii: "t"), let end = time(from: 11) else { return nil }
        if end == t.count { return .localDateTime }
        if end + 1 == t.count, t[end] == UInt8(ascii: "Z") || t[end] == UInt8(ascii: "z") { return .offsetDateTime }
        guard end + 6 == t.count, t[end] == UInt8(ascii: "+") || t[end] == UInt8(ascii: "-"), let oh = num((end + 1)..<(end + 3)),
              t[end + 3] == UInt8(ascii: ":"), let om = num((end + 4)..<(end + 6)), oh <= 23, om <= 59 else { return nil }
        return .offsetDateTime
    }

    /// Digits with single underscores between them.
    static func digits(_ t: ArraySlice<UInt8>, _ isDigit: (UInt8) -> Bool) -> [UInt8]? {
        guard let f = t.first, let l = t.last, isDigit(f), isDigit(l) else { return nil }
        var out: [UInt8] = []
        var prevUnderscore = false
        for c in t {
            if c == UInt8(ascii: "_") {
                if prevUnderscore { return nil }
                prevUnderscore = true
            } else {
                guard isDigit(c) else { return nil }
                prevUnderscore = false
                out.append(c)
            }
        }
        return out
    }

    static func integerShape(_ t: [UInt8]) -> Bool {
        var body = t[...]
        if let f = body.first, f == UInt8(ascii: "+") || f == UInt8(ascii: "-") { body = body.dropFirst() }
        return digits(body, isDigit) != nil
    }

    static func integer(_ t: [UInt8]) -> Int64? {
        if t.count > 2, t[0] == UInt8(ascii: "0") {
            let radix: Int
            let ok: (UInt8) -> Bool
            switch t[1] {
            case UInt8(ascii: "x"): radix = 16; ok = { hexDigit($0) != nil }
            case UInt8(ascii: "o"): radix = 8; ok = { $0 >= 0x30 && $0 <= 0x37 }
            case UInt8(ascii: "b"): radix = 2; ok = { $0 == 0x30 || $0 == 0x31 }
            default: radix = 10; ok = isDigit
            }
            if radix != 10 {
                guard let d = digits(t[2...], ok) else { return nil }
                return Int64(String(decoding: d, as: UTF8.self), radix: radix)
            }
        }
        var body = t[...]
        var negative = false
        if let f = body.first, f == UInt8(ascii: "+") || f == UInt8(ascii: "-") {
            negative = f == UInt8(ascii: "-")
            body = body.dropFirst()
        }
        guard let d = digits(body, isDigit) else { return nil }
        if d.count > 1 && d[0] == UInt8(ascii: "0") { return nil }   // no leading zeros
        return Int64((negative ? "-" : "") + String(decoding: d, as: UTF8.self))
    }

    static func float(_ t: [UInt8]) -> Double? {
        var body = t[...]
        var sign = ""
        if let f = body.first, f == UInt8(ascii: "+") || f == UInt8(ascii: "-") {
            sign = f == UInt8(ascii: "-") ? "-" : ""
            body = body.dropFirst()
        }
        if body.elementsEqual("inf".utf8) { return sign == "-" ? -.infinity : .infinity }
        if body.elementsEqual("nan".utf8) { return sign == "-" ? -.nan : .nan }
        // int-part [ "." digits ] [ e [+-] digits ], with at least one of the two.
        var intEnd = body.startIndex
        while intEnd < body.endIndex, body[intEnd] != UInt8(ascii: "."), body[intEnd] != UInt8(ascii: "e"), body[intEnd] != UInt8(ascii: "E") { intEnd += 1 }
        guard let intDigits = digits(body[body.startIndex..<intEnd], isDigit), intEnd < body.endIndex else { return nil }
        if intDigits.count > 1 && intDigits[0] == UInt8(ascii: "0") { return nil }
        var text = sign + String(decoding: intDigits, as: UTF8.self)
        var p = intEnd
        if body[p] == UInt8(ascii: ".") {
            var e = p + 1
            while e < body.endIndex, body[e] != UInt8(ascii: "e"), body[e] != UInt8(ascii: "E") { e += 1 }
            guard let frac = digits(body[(p + 1)..<e], isDigit) else { return nil }
            text += "." + String(decoding: frac, as: UTF8.self)
            p = e
        }
        if p < body.endIndex {
            guard body[p] == UInt8(ascii: "e") || body[p] == UInt8(ascii: "E") else { return nil }
            var e = p + 1
            var expSign = ""
            if e < body.endIndex, body[e] == UInt8(ascii: "+") || body[e] == UInt8(ascii: "-") {
                expSign = body[e] == UInt8(ascii: "-") ? "-" : ""
                e += 1
            }
            guard let exp = digits(body[e...], isDigit) else { return nil }
            text += "e" + expSign + String(decoding: exp, as: UTF8.self)
        }
        return Double(text)
    }
}

private extension String {
    var trimmingQuotes: String {
        hasPrefix("'") && hasSuffix("'") && count >= 2 ? String(dropFirst().dropLast()) : self
    }
}
