// Package drivers links every format and protocol driver into a program
// that imports it, the way database/sql drivers register themselves.
package drivers

import (
	_ "vdisk/format/mem"
	_ "vdisk/format/raw"
	_ "vdisk/protocol/file"
	_ "vdisk/protocol/nbd"
)
