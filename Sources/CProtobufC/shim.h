// protobuf-c's runtime header; imported only by the TollgateProto Swift module.
#include <protobuf-c/protobuf-c.h>
