import Foundation

/// A test CA, a server certificate for localhost/127.0.0.1 signed by it, a client certificate,
/// and an unrelated CA (for "wrong CA" tests). Generated with openssl at test time.
public struct Certificates: Sendable {
    public var caCertificate: String
    public var caKey: String
    public var serverCertificate: String
    public var serverKey: String
    public var clientCertificate: String
    public var clientKey: String
    public var otherCACertificate: String

    public static func generate(in dir: String) async throws -> Certificates {
        _ = try TestEnvironment.require("openssl")
        let c = Certificates(caCertificate: dir + "/ca.crt", caKey: dir + "/ca.key",
                             serverCertificate: dir + "/server.crt", serverKey: dir + "/server.key",
                             clientCertificate: dir + "/client.crt", clientKey: dir + "/client.key",
                             otherCACertificate: dir + "/other-ca.crt")
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: dir + "/san.ext", atomically: true, encoding: .utf8)
        // EC P-256 keys: generated in about a millisecond, where RSA-2048 took a good part of a
        // second of CPU per key and starved the tests running in parallel on a 2-core machine.
        let steps: [[String]] = [
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=gateway-test-ca",
             "-keyout", c.caKey, "-out", c.caCertificate],
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
             "-keyout", dir + "/other-ca.key", "-out", c.otherCACertificate],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost", "-keyout", c.serverKey, "-out", dir + "/server.csr"],
            ["x509", "-req", "-in", dir + "/server.csr", "-CA", c.caCertificate, "-CAkey", c.caKey, "-CAcreateserial",
             "-days", "2", "-extfile", dir + "/san.ext", "-out", c.serverCertificate],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=gateway-client", "-keyout", c.clientKey, "-out", dir + "/client.csr"],
            ["x509", "-req", "-in", dir + "/client.csr", "-CA", c.caCertificate, "-CAkey", c.caKey, "-CAcreateserial",
             "-days", "2", "-out", c.clientCertificate],
        ]
        for args in steps {
            let (status, out) = try await TestEnvironment.run("openssl", args)
            guard status == 0 else { throw FixtureError("openssl \(args.prefix(2).joined(separator: " ")) failed:\n\(out)") }
        }
        return c
    }
}
