import FuzzDriver
import ThriftCore
import ThriftFuzzing

// The symbol libFuzzer's runtime expects, also what runFuzzer calls.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzThriftBinary(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { fuzzThrift(.binary, data, size) }

runFuzzer { data, size in fuzzThriftBinary(data, size) }
