package attach

import (
	"errors"
	"fmt"
	"strings"

	"vdisk/attach/part"
)

// addPartitions registers the partitions of the image's table with the
// kernel when the kernel's own scan found none. Kernels built without
// partition table parsers (minimal VM kernels) scan nothing at
// LOOP_CONFIGURE, so without this a partitioned image would show no
// loopNpM devices. A missing or unreadable table is no attach error.
func (d *Daemon) addPartitions(u *Unit) {
	if u.dev == nil || len(u.dev.Partitions()) > 0 {
		return
	}
	ssz := 1 << u.SecBits
	t, err := part.Parse(u.img, u.img.Size(), ssz)
	if errors.Is(err, part.ErrNoTable) {
		d.log.Debug("no partition table", "unit", u.Name())
		return
	}
	if err != nil {
		d.log.Warn("partition table not used", "unit", u.Name(), "error", err)
		return
	}
	var added []string
	for _, p := range t.Partitions {
		if err := u.dev.AddPartition(p.Number, p.Start, p.DeviceLength(ssz)); err != nil {
			d.log.Warn("partition not registered", "unit", u.Name(), "partition", p.Number, "error", err)
			continue
		}
		added = append(added, fmt.Sprintf("p%d", p.Number))
	}
	if len(added) > 0 {
		d.log.Info("registered partitions the kernel did not scan", "unit", u.Name(), "device", u.dev.Path,
			"label", t.Label, "partitions", strings.Join(added, " "))
	}
}
