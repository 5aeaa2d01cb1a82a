import NIOSSL

/// TLS settings for an `mqtts://` broker.
extension MQTTClient {
    static func makeSSLContext(_ tls: MQTTTLSOptions) throws -> NIOSSLContext {
        var c = TLSConfiguration.makeClientConfiguration()
        c.minimumTLSVersion = .tlsv12
        if let ca = tls.caFile { c.trustRoots = .file(ca) }
        if let cert = tls.certificateFile {
            c.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
        }
        if let key = tls.keyFile { c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)) }
        if !tls.verifyHostname { c.certificateVerification = .noHostnameVerification }
        return try NIOSSLContext(configuration: c)
    }

    static func isIPAddress(_ host: String) -> Bool {
        host.contains(":") || host.split(separator: ".").count == 4 && host.split(separator: ".").allSatisfy { UInt8($0) != nil }
    }
}
