import FuzzDriver

runFuzzer { data, size in fuzzMetadata(data, size) }
