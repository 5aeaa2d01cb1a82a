import Foundation
import GatewayConfig
import Testing
import TestSupport
import TOMLReader

/// The type-tagged text that `Tests/TestSupport/scripts/toml_oracle.py` prints for tomllib's result.
func canonical(_ v: TOMLValue) -> String {
    switch v {
    case .boolean(let b): return "b:\(b)"
    case .integer(let i): return "i:\(i)"
    case .float(let d):
        if d.isNaN { return "f:nan" }
        return "f:" + String(format: "%016llx", d.bitPattern)
    case .string(let s): return "s:" + hex(s)
    case .dateTime(_, let kind): return "d:\(kind.rawValue)"
    case .array(let a): return "[" + a.map(canonical).joined(separator: ",") + "]"
    case .table(let t): return canonical(t)
    }
}

func canonical(_ t: TOMLTable) -> String {
    "{" + t.keys.map { hex($0) + "=" + canonical(t[$0]!) }.sorted().joined(separator: ",") + "}"
}

private func hex(_ s: String) -> String { s.utf8.map { String(format: "%02x", $0) }.joined() }

@Suite("TOML reader")
struct TOMLTests {
    @Test("values of every kind, keys in order with their lines")
    func values() throws {
        let doc = try TOML.parse("""
            # a comment
            title = "Lobby \\u00e9\\t\\"x\\"" # trailing comment
            literal = 'C:\\x02\\n'
            int = -1_000
            hex = 0xDEAD_beef
            oct = 0o755
            bin = 0b1010
            float = 6.626e-34
            inf = -inf
            yes = true
            date = 1979-05-27T07:32:00-08:00
            day = 1979-05-27
            list = [ 1, 2,
              # inside
              3, ]
            inline = { a = 1, b.c = "d" }
            multi = \"\"\"
            one \\
              two\"\"\"\"
            raw = '''
            a\\b'''
            "quoted key" = 1
            site."dotted.part".x = 2

            [server]
            port = 1883

            [[device]]
            name = "a"
            [[device]]
            name = "b"
            [device.map]
            0 = "closed"
            """)
        #expect(doc.keys.first == "title")
        #expect(doc["title"] == .string("Lobby é\t\"x\""))
        #expect(doc["literal"] == .string("C:\\x02\\n"))
        #expect(doc["int"] == .integer(-1000))
        #expect(doc["hex"] == .integer(0xDEADBEEF))
        #expect(doc["oct"] == .integer(0o755))
        #expect(doc["bin"] == .integer(10))
        #expect(doc["float"] == .float(6.626e-34))
        #expect(doc["inf"] == .float(-.infinity))
        #expect(doc["yes"] == .boolean(true))
        #expect(doc["date"] == .dateTime("1979-05-27T07:32:00-08:00", .offsetDateTime))
        #expect(doc["day"] == .dateTime("1979-05-27", .localDate))
        #expect(doc["list"] == .array([.integer(1), .integer(2), .integer(3)]))
        #expect(doc["inline"]?.table?["b"]?.table?["c"] == .string("d"))
        #expect(doc["multi"] == .string("one two\""))
        #expect(doc["raw"] == .string("a\\b"))
        #expect(doc["quoted key"] == .integer(1))
        #expect(doc["site"]?.table?["dotted.part"]?.table?["x"] == .integer(2))
        #expect(doc["server"]?.table?["port"] == .integer(1883))
        let devices = try #require(doc["device"]?.array)
        #expect(devices.compactMap { $0.table?["name"]?.string } == ["a", "b"])
        #expect(devices[1].table?["map"]?.table?["0"] == .string("closed"))
        // Lines: of keys, and of the table headers.
        #expect(doc.line(of: "title") == 2)
        #expect(doc.line(of: "server") == 25)
        #expect(doc["server"]?.table?.line(of: "port") == 26)
        #expect(devices[1].table?.line == 30)
        #expect(devices[1].table?["map"]?.table?.line == 32)
    }

    @Test("broken documents: the message and the line", arguments: [
        ("a = 1\nb = = 2", 2, "expected a value"),
        ("a = 1\na = 2", 2, "'a' is defined twice"),
        ("[t]\nx = 1\n[t]", 3, "[t] is defined twice"),
        ("a.b = 1\n[a]", 2, "[a] is defined twice"),
        ("[a]\nb = {c = 1}\n[a.b]", 3, "already a table"),
        ("s = \"tab\\x41\"", 1, "invalid escape \\x"),
        ("s = \"no end", 1, "not closed"),
        ("s = \"line\nend\"", 1, "a line end inside a string"),
        ("n = 0123", 1, "leading zeros"),
        ("n = 9223372036854775808", 1, "does not fit in 64 bits"),
        ("n = 1__0", 1, "not a valid value"),
        ("x = word", 1, "strings need quotes"),
        ("t = { a = 1, }", 1, "trailing comma"),
        ("t = { a = 1,\n b = 2 }", 1, "expected a key"),
        ("d = 2023-02-29", 1, "not a valid date"),
        ("a = 1 b = 2", 1, "expected the end of the line"),
        ("a = [1 2]", 1, "expected ',' or ']'"),
        ("[[a]]\n[a]", 2, "already an array of tables"),
        ("a = []\n[[a]]", 2, "already an array"),
        ("# bad \u{01} comment", 1, "control character"),
        ("[a]\nb.c = 1\n[a.b]", 3, "defined twice"),
        ("[x.y.z]\n[x]\ny.w = 1\n[x.y]", 4, "defined twice"),
    ])
    func broken(_ text: String, _ line: Int, _ message: String) {
        do {
            _ = try TOML.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }

    @Test("invalid UTF-8 is refused with its line")
    func invalidUTF8() {
        #expect(throws: TOMLError(line: 2, column: 1, message: "the file is not valid UTF-8")) {
            try TOML.parse(bytes: Array("a = 1\nb = \"".utf8) + [0xC3, 0x28, 0x22])
        }
    }

    /// Our reader and Python's tomllib (an independent implementation) must agree on every
    /// document: both accept it with the same values, or both refuse it. The documents are the
    /// shipped gateway.toml, the broken fixtures, hand-written edge cases and thousands of random
    /// mutations of them (seeded, so a failure reproduces).
    @Test("agrees with Python's tomllib on thousands of documents")
    func differential() async throws {
        let dir = try TestEnvironment.makeTemporaryDirectory("toml-diff")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var bases: [String] = [try String(contentsOfFile: TestEnvironment.packageRoot + "/gateway.toml", encoding: .utf8)]
        for f in Fixture.all { bases.append(try String(contentsOfFile: f.path, encoding: .utf8)) }
        bases += Self.edgeCases
        var docs: [[UInt8]] = bases.map { Array($0.utf8) }
        var rng = SplitMix(seed: 20261121)
        let alphabet = Array("[]{}=.,\"'\\#\n \t_+-0123456789xobeE:TZ.aft\r".utf8)
        for _ in 0..<3000 {
            var d = Array(bases[Int(rng.next() % UInt64(bases.count))].utf8)
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                guard !d.isEmpty else { break }
                let at = Int(rng.next() % UInt64(d.count))
                switch rng.next() % 4 {
                case 0: d.remove(at: at)
                case 1: d.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
                case 2: d[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                default:   // repeat a line (duplicate keys and tables)
                    let lines = d.split(separator: 0x0A, omittingEmptySubsequences: false)
                    let l = lines[at % lines.count]
                    d += [0x0A] + Array(l)
                }
            }
            docs.append(d)
        }
        for (n, d) in docs.enumerated() {
            _ = FileManager.default.createFile(atPath: String(format: "%@/%05d.toml", dir, n), contents: Data(d))
        }
        let script = TestEnvironment.packageRoot + "/Tests/TestSupport/scripts/toml_oracle.py"
        let (status, output) = try await TestEnvironment.run("python3", [script, dir], timeout: .seconds(120))
        try #require(status == 0, "oracle failed: \(output.prefix(2000))")
        var oracle: [String: (ok: Bool, text: String)] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3 else { continue }
            oracle[parts[0]] = (parts[1] == "ok", parts[2])
        }
        try #require(oracle.count == docs.count, "the oracle answered \(oracle.count) of \(docs.count)")
        var disagreements: [String] = []
        var accepted = 0
        for (n, d) in docs.enumerated() {
            let name = String(format: "%05d.toml", n)
            let theirs = oracle[name]!
            let ours: (ok: Bool, text: String)
            do { ours = (true, canonical(try TOML.parse(bytes: d))) } catch { ours = (false, error.description) }
            if ours.ok { accepted += 1 }
            if ours.ok != theirs.ok || (ours.ok && ours.text != theirs.text) {
                disagreements.append("\(name): ours \(ours.ok ? "ok" : ours.text), tomllib \(theirs.ok ? "ok" : theirs.text)\n\(String(decoding: d, as: UTF8.self).prefix(400))")
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) disagreements, first:\n\(disagreements.prefix(5).joined(separator: "\n---\n"))")
        // Both kinds must be well represented, or the comparison proves little.
        #expect(accepted > docs.count / 5 && accepted < docs.count * 4 / 5, "accepted \(accepted) of \(docs.count)")
    }

    static let edgeCases: [String] = [
        "",
        "a = \"\"\"\"\"\"",
        "a = '''''''''",
        "a = \"\"\"x\"\"\"\"\"",
        "a = \"\"\"\\\n\n   \\\n  x\"\"\"",
        "a = 'it''s'",
        "a = \"\\u00E9\\U0001F600\"",
        "a = \"\\uD800\"",
        "1234 = 1\n\"\" = 2\n'' = 3",
        "a . b . c = 1\na.d = 2",
        "[ a . \"b\" ]\nx = 1",
        "[a.b.c]\n[a]\nb.d = 1",
        "[a]\nb.c = 1\n[a.b.d]\nx = 1",
        "[[a]]\nb = 1\n[a.c]\nd = 1\n[[a]]\n[a.c]\nd = 2",
        "x = [[1, 2], [\"a\"], [{b = 1}], []]",
        "x = {a = {b = {c = 1}}, d.e = 2}",
        "x = {a.b = 1, a.c = 2}",
        "x = {a = {b = 1}, a.c = 2}",
        "n = [+0, -0, 0, 1_2, +99, -17, 0x0, 0o0, 0b0, 0xff]",
        "f = [+1.0, -0.0, 3.14, 5e+22, 1e06, -2E-2, 6.626e-34, 224_617.445_991, inf, +inf, -inf, nan, +nan, -nan]",
        "f = 1e1_0",
        "f = 1.e5",
        "f = .5",
        "f = 1._5",
        "d = [1979-05-27T07:32:00Z, 1979-05-27t07:32:00.999999-07:00, 1979-05-27 07:32:00, 1979-05-27, 07:32:00, 00:32:00.5]",
        "d = 1979-05-27 07:32",
        "d = 1979-13-01",
        "d = 2024-02-29",
        "d = 1900-02-29",
        "d = 1979-05-27T24:00:00",
        "d = 1979-05-27T07:32:00+24:00",
        "d = 07:32:60",
        "a = 1\r\nb = 2\r\n",
        "a = 1\rb = 2",
        "a = \"x\" # c\u{7F}",
        "a = true\nb = false\nc = truex",
        "[a]\n[a.b]\n[a]",
        "[a]\nx.y = 1\n[a.x.z]",
        "a.b = 1\n[a.c]",
        "[x] y = 1",
        "[[x]]\n[[x.y]]\n[x.y]",
        "a = [1,\n# c\n2,\n]\n",
        "a = { }\nb = {}",
        "key = \"value\"\n[table]\nkey = 'other'\n[table.sub]\n[[arr]]\n[[arr]]\nx = 1",
    ]
}
