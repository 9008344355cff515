// swift-tools-version: 6.1
// libFuzzer targets, kept out of the main package because they have no
// `main` of their own: libFuzzer supplies it. Built by `make fuzz` with
// -sanitize=fuzzer,address.
import PackageDescription

let package = Package(
    name: "TollgateFuzz",
    dependencies: [.package(name: "Tollgate", path: "..")],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "fuzz-frames", dependencies: ["FuzzDriver", .product(name: "RPCCore", package: "Tollgate")]),
        .executableTarget(name: "fuzz-metadata", dependencies: ["FuzzDriver", .product(name: "RPCCore", package: "Tollgate")]),
        .target(name: "ThriftFuzzing", dependencies: [.product(name: "ThriftCore", package: "Tollgate")]),
        .executableTarget(name: "fuzz-thrift-binary", dependencies: ["FuzzDriver", "ThriftFuzzing", .product(name: "ThriftCore", package: "Tollgate")]),
        .executableTarget(name: "fuzz-thrift-compact", dependencies: ["FuzzDriver", "ThriftFuzzing", .product(name: "ThriftCore", package: "Tollgate")]),
    ]
)
