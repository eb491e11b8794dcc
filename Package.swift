// swift-tools-version:6.0
import PackageDescription

// Layers (see DESIGN.md): NestboxSupport (generic: exits, config, logging, files, locks)
// <- NestboxStore (everything that touches mail on disk) <- one thin executable per tool.
let package = Package(
    name: "nestbox",
    products: [
        .executable(name: "nestbox-deliver", targets: ["nestbox-deliver"]),
        .executable(name: "nestbox-lmtpd", targets: ["nestbox-lmtpd"]),
        .executable(name: "nestbox-reconstruct", targets: ["nestbox-reconstruct"]),
        .executable(name: "nestbox-purge", targets: ["nestbox-purge"]),
        .executable(name: "nestbox-quota", targets: ["nestbox-quota"]),
        .executable(name: "nestbox-passwd", targets: ["nestbox-passwd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "NestboxSupport"),
        // The SASL bridge: libsasl2 (writes, checks) and Berkeley DB (read-only walks of sasldb2).
        .systemLibrary(name: "CSASL", pkgConfig: "libsasl2", providers: [.apt(["libsasl2-dev"])]),
        .systemLibrary(name: "CBerkeleyDB", providers: [.apt(["libdb5.3-dev"])]),
        .target(name: "NestboxSASLDB", dependencies: ["NestboxSupport", "CBerkeleyDB"]),
        .target(name: "NestboxSASL", dependencies: ["NestboxSupport", "NestboxSASLDB", "CSASL"]),
        .target(name: "NestboxStore", dependencies: ["NestboxSupport", "NestboxSASLDB"]),
        .target(name: "NestboxLMTP", dependencies: ["NestboxSupport", "NestboxStore"]),
        .target(name: "NestboxLMTPServer", dependencies: [
            "NestboxSupport", "NestboxStore", "NestboxLMTP",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .executableTarget(name: "nestbox-lmtpd", dependencies: ["NestboxSupport", "NestboxStore", "NestboxLMTP", "NestboxLMTPServer"]),
        .executableTarget(name: "nestbox-deliver", dependencies: ["NestboxSupport", "NestboxStore", "NestboxLMTP"]),
        .executableTarget(name: "nestbox-reconstruct", dependencies: ["NestboxSupport", "NestboxStore"]),
        .executableTarget(name: "nestbox-purge", dependencies: ["NestboxSupport", "NestboxStore"]),
        .executableTarget(name: "nestbox-quota", dependencies: ["NestboxSupport", "NestboxStore"]),
        .executableTarget(name: "nestbox-passwd", dependencies: ["NestboxSupport", "NestboxSASL"]),
        .testTarget(name: "NestboxStoreTests", dependencies: ["NestboxSupport", "NestboxStore"]),
        .testTarget(name: "NestboxLMTPTests", dependencies: ["NestboxSupport", "NestboxStore", "NestboxLMTP"]),
        .testTarget(name: "NestboxEndToEndTests", dependencies: ["NestboxSupport", "NestboxStore", "NestboxSASL"]),
    ],
    swiftLanguageModes: [.v5]
)
