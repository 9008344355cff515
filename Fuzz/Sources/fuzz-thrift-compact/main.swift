import FuzzDriver
import ThriftCore
import ThriftFuzzing

runFuzzer { data, size in fuzzThrift(.compact, data, size) }
