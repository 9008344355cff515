public import TollgateListeners

/// The RPC layer's name for ``TollgateListeners/LoopTaskExecutor`` (stream
/// listeners use it too, and RPCNIO builds on the listeners module).
public typealias LoopTaskExecutor = TollgateListeners.LoopTaskExecutor
