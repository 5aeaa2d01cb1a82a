/// Byte strings written with escapes in the serial settings (`prefix`, `suffix`, `delimiter`, command templates).
public enum ByteEscapes {
    /// Decodes escapes in the strings of serial settings: `\xHH`, `\r`, `\n`, `\t`, `\0`, `\\`
    /// (write them in TOML literal strings, `'\x02'`; basic strings already turn `\r\n` into bytes).
    public static func decode(_ s: String) -> Result<[UInt8], DecodeError> {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            guard c == UInt8(ascii: "\\") else { out.append(c); continue }
            guard let e = it.popFirst() else { return .failure(DecodeError(message: "a lone '\\' at the end")) }
            switch e {
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "0"): out.append(0x00)
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "x"):
                guard let h = it.popFirst(), let l = it.popFirst(), let hi = hexValue(h), let lo = hexValue(l) else {
                    return .failure(DecodeError(message: "\\x needs two hex digits"))
                }
                out.append(hi << 4 | lo)
            default:
                return .failure(DecodeError(message: "unknown escape '\\\(Character(Unicode.Scalar(e)))' (use \\xHH, \\r, \\n, \\t, \\0, \\\\)"))
            }
        }
        return .success(out)
    }

    public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
