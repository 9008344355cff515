// LMDB's public header; imported only by the LMDBKit Swift module.
#include <lmdb.h>
