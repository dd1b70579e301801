#include "writefault.h"
