import XCTest
@testable import NestboxStore

/// IMAP modified UTF-7 (RFC 3501 5.1.3): the on-disk form of folder names.
final class ModifiedUTF7Tests: XCTestCase {
    /// (display name, storage form). Every row must encode to the right column and decode back.
    static let table: [(String, String)] = [
        ("", ""),
        ("INBOX", "INBOX"),
        ("Sent Items", "Sent Items"),
        ("Work-2024_(old)!", "Work-2024_(old)!"),
        ("~tilde", "~tilde"),
        ("&", "&-"),
        ("a&b", "a&-b"),
        ("&&", "&-&-"),
        ("Ärger", "&AMQ-rger"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("été", "&AOk-t&AOk-"),
        ("日本語", "&ZeVnLIqe-"),
        ("Привет", "&BB8EQAQ4BDIENQRC-"),
        ("Ärger & Co", "&AMQ-rger &- Co"),
        ("~peter/mail/台北", "~peter/mail/&U,BTFw-"),  // RFC 3501's example: `,` stands for base64 `/`
        ("😀", "&2D3eAA-"),                            // U+1F600: surrogate pair D83D DE00
        ("a😀b", "a&2D3eAA-b"),
        ("Ä€😀", "&AMQgrNg93gA-"),                       // BMP and astral in one run
        ("\u{7f}", "&AH8-"),                             // DEL is not printable ASCII
        ("\t", "&AAk-"),
    ]

    func testEncodeTable() {
        for (plain, encoded) in Self.table {
            XCTAssertEqual(ModifiedUTF7.encode(plain), encoded, "encode \(plain.debugDescription)")
        }
    }

    func testDecodeTable() {
        for (plain, encoded) in Self.table {
            XCTAssertEqual(ModifiedUTF7.decode(encoded), plain, "decode \(encoded.debugDescription)")
        }
    }

    func testRoundTrip() {
        let samples = Self.table.map { $0.0 } + [
            "Ünïcödé Földer", "中文/混合 & text", "🇩🇪 flags 👨‍👩‍👧", "a\u{0301}", "\u{FFFF}\u{10FFFF}", "&-&AMQ-",
            String(repeating: "ä", count: 300),
        ]
        for s in samples {
            let e = ModifiedUTF7.encode(s)
            XCTAssertTrue(e.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7e }, "encoded form is printable ASCII: \(e)")
            XCTAssertEqual(ModifiedUTF7.decode(e), s, "round trip of \(s.debugDescription) via \(e)")
        }
    }

    func testEncodedFormHasNoSlashOrPadding() {
        // `/` in base64 becomes `,`; a base64 run has no `=` padding.
        for s in ["台北", "???", "ÿÿÿ", "\u{FFFF}", "Ä", "ÄÖ", "ÄÖÜ"] {
            let e = ModifiedUTF7.encode(s)
            if s.unicodeScalars.contains(where: { $0.value > 0x7e }) {
                XCTAssertFalse(e.contains("/"), e)
                XCTAssertFalse(e.contains("="), e)
            }
        }
        XCTAssertEqual(ModifiedUTF7.encode("\u{FFFF}"), "&,,8-")
    }

    func testInvalidInputsDecodeToNil() {
        let invalid: [(String, String)] = [
            ("&", "& without -"),
            ("&AMQ", "unterminated base64 run"),
            ("abc&AMQrger", "unterminated base64 run after text"),
            ("&AMQ*-", "* is not in the alphabet"),
            ("&AM/-", "/ is not in the modified alphabet (it is ,)"),
            ("&AMQ=-", "padding is not allowed"),
            ("&A-", "fewer than 16 bits"),
            ("&AMQA-", "odd number of bytes"),
            ("&AGE-", "printable ASCII 'a' must not be encoded"),
            ("&ACY-", "& must be written &-, not encoded"),
            ("&2D0-", "lone high surrogate"),
            ("&3gA-", "lone low surrogate"),
            ("&3gDYPQ-", "surrogates in the wrong order"),
            ("Ärger", "raw non-ASCII"),
            ("a\tb", "raw control character"),
            ("a\u{7f}b", "raw DEL"),
            ("a\u{0}b", "raw NUL"),
        ]
        for (text, why) in invalid {
            XCTAssertNil(ModifiedUTF7.decode(text), "\(text.debugDescription): \(why)")
        }
    }
}
