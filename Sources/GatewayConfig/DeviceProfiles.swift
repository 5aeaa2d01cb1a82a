import TOMLReader

#if canImport(Glibc)
import Glibc
#endif

// Device profiles: a device's points described once, in a TOML file of their own, and taken by
// `profile = "name"` on a `[[device]]`. The site's profiles (`profiles/` beside gateway.toml, so
// /etc/gateway/profiles) come before those shipped with the gateway.
//
//   [profile]
//   vendor = "Eastron"
//   model = "SDM120-Modbus"
//   source = "Eastron SDM120-Modbus protocol, V2.4"   # the register map it was written from
//   [profile.identification]                          # what `gateway scan` matches (FC 43)
//   vendor = "Eastron"
//   product = "SDM120"
//   [[point]]                                          # as [[device.point]], plus `example`
//   name = "voltage"
//   register = "input"
//   ...

/// What `gateway scan` compares with a device's Read Device Identification (FC 43) answer.
public struct ProfileIdentification: Sendable, Equatable {
    /// VendorName (object 0), compared without case.
    public var vendor: String?
    /// ProductCode (object 1), compared without case.
    public var product: String?
    /// MajorMinorRevision (object 2): served by `gateway simulate --profile`, not compared.
    public var revision: String?
    public init() {}
}

/// One profile file.
public struct DeviceProfile: Sendable, Equatable {
    public var name: String
    public var file: String
    public var vendor: String
    public var model: String
    public var source: String
    public var identification: ProfileIdentification
    public var points: [PointSettings]
    /// `example` of each point: a plausible value, served by `gateway simulate --profile`.
    public var examples: [String: Double]

    /// Whether an identification answer names this profile's device.
    public func matches(vendor v: String?, product p: String?) -> Bool {
        guard identification.vendor != nil || identification.product != nil else { return false }
        func same(_ want: String?, _ got: String?) -> Bool {
            guard let want else { return true }
            guard let got else { return false }
            return want.lowercased() == String(got.unicodeScalars.filter { $0 != "\0" }).split(separator: " ").joined(separator: " ").lowercased()
        }
        return same(identification.vendor, v) && same(identification.product, p)
    }
}

/// Where profiles are found, and loading them.
public struct ProfileLibrary: Sendable {
    /// Searched in order; the first file named `<name>.toml` wins.
    public var directories: [String]

    public init(directories: [String]) { self.directories = directories }

    /// The site's profiles (`profiles/` beside the config file), then the shipped ones:
    /// `<prefix>/share/gateway/profiles` beside the binary (/usr/share/gateway/profiles for the
    /// Debian package), then `profiles/` of the source tree the binary was built from (a checkout).
    /// `GATEWAY_PROFILES` (directories separated by ':') replaces the shipped ones.
    public static func standard(configFile: String?) -> ProfileLibrary {
        var dirs: [String] = []
        if let configFile {
            let dir = configFile.contains("/") ? String(configFile[..<configFile.lastIndex(of: "/")!]) : "."
            dirs.append((dir.isEmpty ? "/" : dir) + "/profiles")
        }
        if let env = getenv("GATEWAY_PROFILES") {
            dirs += String(cString: env).split(separator: ":").map(String.init)
            return ProfileLibrary(directories: dirs)
        }
        if let exe = executableDirectory(), let slash = exe.lastIndex(of: "/") {
            dirs.append(String(exe[..<slash]) + "/share/gateway/profiles")  // /usr/bin -> /usr/share/...
        }
        dirs.append(sourceTreeProfiles)
        return ProfileLibrary(directories: dirs)
    }

    /// `profiles/` in the checkout this file was compiled from.
    static let sourceTreeProfiles: String = {
        let here = #filePath  // .../Sources/GatewayConfig/DeviceProfiles.swift
        var parts = here.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/profiles"
    }()

    static func executableDirectory() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return nil }
        return String(path[..<slash])
    }

    /// The file of profile `name`, or nil.
    public func path(of name: String) -> String? {
        guard ConfigLoader.isTopicSafe(name) else { return nil }
        for d in directories {
            let p = "\(d)/\(name).toml"
            if access(p, R_OK) == 0 { return p }
        }
        return nil
    }

    /// Every profile found, by name (a site's profile hides a shipped one of the same name).
    public func all() -> [(name: String, file: String)] {
        var seen: Set<String> = []
        var out: [(String, String)] = []
        for d in directories {
            guard let dir = opendir(d) else { continue }
            var names: [String] = []
            while let e = readdir(dir) {
                let n = withUnsafeBytes(of: e.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if n.hasSuffix(".toml") { names.append(String(n.dropLast(5))) }
            }
            closedir(dir)
            for n in names.sorted() where ConfigLoader.isTopicSafe(n) && seen.insert(n).inserted {
                out.append((n, "\(d)/\(n).toml"))
            }
        }
        return out.sorted { $0.0 < $1.0 }
    }

    /// Loads profile `name`; every problem is reported with the profile's file and line.
    public func load(_ name: String) throws(ConfigError) -> DeviceProfile {
        guard let file = path(of: name) else {
            let known = all().map(\.name)
            throw ConfigError(file: name, issues: [ConfigIssue(path: "", message:
                "no profile '\(name)' in \(directories.joined(separator: ", "))\(known.isEmpty ? "" : " (known: \(known.joined(separator: ", ")))")")])
        }
        guard let bytes = ConfigLoader.readFile(file) else {
            throw ConfigError(file: file, issues: [ConfigIssue(path: "", message: "cannot read the file: \(String(cString: strerror(errno)))")])
        }
        return try Self.parse(bytes: bytes, name: name, file: file)
    }

    /// Parses a profile's text.
    public static func parse(bytes: [UInt8], name: String, file: String) throws(ConfigError) -> DeviceProfile {
        let root: TOMLTable
        do {
            root = try TOML.parse(bytes: bytes)
        } catch {
            throw ConfigError(file: file, issues: [ConfigIssue(path: "", line: error.line, message: "TOML syntax: \(error.message) (column \(error.column))")])
        }
        let sink = IssueSink()
        let top = Reader(root, path: "", sink: sink)
        var profile = DeviceProfile(name: name, file: file, vendor: "", model: "", source: "",
                                    identification: ProfileIdentification(), points: [], examples: [:])
        if let h = top.table("profile", required: true) {
            profile.vendor = h.string("vendor", required: true) ?? ""
            profile.model = h.string("model", required: true) ?? ""
            profile.source = h.string("source", required: true) ?? ""
            if let i = h.table("identification") {
                profile.identification.vendor = i.string("vendor")
                profile.identification.product = i.string("product")
                profile.identification.revision = i.string("revision")
                i.finish()
            }
            h.finish()
        }
        let pointTables = top.tables("point")
        profile.points.reserveCapacity(pointTables.count)
        for (i, p) in pointTables.enumerated() {
            let example = p.double("example")
            if let point = PointSettings(reader: p, index: i) {
                if profile.points.contains(where: { $0.name == point.name }) {
                    p.issue("name", "duplicate point name '\(point.name)'")
                } else {
                    profile.points.append(point)
                    if let example { profile.examples[point.name] = example }
                }
            }
            p.finish()
        }
        if pointTables.isEmpty { top.issue("point", "the profile has no [[point]]") }
        top.finish()
        guard sink.issues.isEmpty else {
            throw ConfigError(file: file, issues: sink.issues.map { var i = $0; i.file = file; return i })
        }
        return profile
    }
}

/// Profiles loaded while reading one gateway.toml: each file read once, its problems reported once.
final class ProfileCache {
    let library: ProfileLibrary
    private var loaded: [String: Result<DeviceProfile, ConfigError>] = [:]
    init(library: ProfileLibrary) { self.library = library }

    /// The profile, or nil after its problems were added to `sink` (once per profile).
    func profile(_ name: String, sink: IssueSink, reportAt r: Reader) -> DeviceProfile? {
        if let known = loaded[name] {
            if case .success(let p) = known { return p }
            return nil
        }
        do {
            let p = try library.load(name)
            loaded[name] = .success(p)
            return p
        } catch {
            loaded[name] = .failure(error)
            if error.issues.allSatisfy({ $0.file == nil }) && error.file == name {
                r.issue("profile", error.issues.first?.message ?? "no profile '\(name)'")
            } else {
                sink.issues += error.issues.map { var i = $0; i.file = i.file ?? error.file; return i }
            }
            return nil
        }
    }
}

extension DeviceSettings {
    /// `profile` and `points_remove` on a Modbus `[[device]]`: the profile's points first, the
    /// device's own replacing them by name or added after them, minus those removed.
    mutating func expand(profile name: String, remove: [String], reader r: Reader, profiles: ProfileCache) {
        guard let profile = profiles.profile(name, sink: r.sink, reportAt: r) else { return }
        for n in remove where !profile.points.contains(where: { $0.name == n }) {
            r.issue("points_remove", "profile '\(name)' has no point '\(n)'")
        }
        var merged = profile.points.filter { !remove.contains($0.name) }
        merged.reserveCapacity(merged.count + points.count)
        for own in points {
            if let i = merged.firstIndex(where: { $0.name == own.name }) { merged[i] = own } else { merged.append(own) }
        }
        points = merged
        if manufacturer == nil { manufacturer = profile.vendor }
        if model == nil { model = profile.model }
        if points.isEmpty { r.issue("points_remove", "removes every point of profile '\(name)'") }
    }
}
