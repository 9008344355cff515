import FuzzDriver

runFuzzer { data, size in fuzzFrames(data, size) }
