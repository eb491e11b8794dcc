// swift-tools-version:6.0
import PackageDescription

// Layers (see DESIGN.md): NestboxSupport (generic: exits, config, logging, files, locks)
// <- NestboxStore (everything that touches mail on disk) <- one thin executable per tool.
let package = Package(
    name: "nestbox",
    products: [
        .executable(name: "nestbox-deliver", targets: ["nestbox-deliver"]),
    ],
    targets: [
        .target(name: "NestboxSupport"),
        .target(name: "NestboxStore", dependencies: ["NestboxSupport"]),
        .executableTarget(name: "nestbox-deliver", dependencies: ["NestboxSupport", "NestboxStore"]),
        .testTarget(name: "NestboxStoreTests", dependencies: ["NestboxSupport", "NestboxStore"]),
        .testTarget(name: "NestboxEndToEndTests", dependencies: ["NestboxSupport", "NestboxStore"]),
    ],
    swiftLanguageModes: [.v5]
)
