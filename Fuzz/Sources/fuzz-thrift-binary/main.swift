import FuzzDriver
import ThriftCore
import ThriftFuzzing

runFuzzer { data, size in fuzzThrift(.binary, data, size) }
