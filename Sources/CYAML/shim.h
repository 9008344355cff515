// libyaml's public header; imported only by the YAMLKit Swift module.
#include <yaml.h>
