// Package drivers links every format and protocol driver into a program
// that imports it, the way database/sql drivers register themselves.
package drivers

import (
	_ "vdisk/block/cache"
	_ "vdisk/format/mem"
	_ "vdisk/format/qcow2"
	_ "vdisk/format/raw"
	_ "vdisk/format/vhd"
	_ "vdisk/protocol/file"
)
