package attach

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"vdisk/attach/ctl"
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

// rescan makes the kernel's partitions of the unit match its partition
// table, as partx -u would but without partx's limits (it looks only at as
// many partition numbers as the table has entries, and keeps partitions
// the table dropped). Tools that rewrite a table ask the kernel to re-read
// it (BLKRRPART), which on a kernel without parsers drops every partition.
// Partitions that changed and are in use stay as they are and make the
// rescan fail with EBUSY, naming them; everything else is still synced.
func (d *Daemon) rescan(u *Unit) ([]ctl.Partition, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dev == nil {
		return nil, withErrno(syscall.ENXIO, "%s: the unit is being detached", u.Name())
	}
	// What tools wrote through the device must reach the image first.
	u.dev.Sync(30 * time.Second)
	ssz := 1 << u.SecBits
	t, err := part.Parse(u.img, u.img.Size(), ssz)
	if errors.Is(err, part.ErrNoTable) {
		t, err = &part.Table{}, nil
	}
	if err != nil {
		return nil, withErrno(syscall.EINVAL, "%s: %v", u.Name(), err)
	}
	want := map[int]part.Partition{}
	for _, p := range t.Partitions {
		want[p.Number] = p
	}
	var busy []string
	var errs []error
	have := map[int]bool{}
	for _, n := range u.dev.Partitions() {
		start, length, err := u.dev.PartitionExtent(n)
		if p, ok := want[n]; ok && err == nil && p.Start == start && p.DeviceLength(ssz) == length {
			have[n] = true
			continue
		}
		if err := u.dev.DelPartition(n); err != nil {
			have[n] = true // whatever it is, it stays
			if errors.Is(err, unix.EBUSY) {
				busy = append(busy, fmt.Sprintf("%sp%d", u.dev.Name(), n))
			} else {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range t.Partitions {
		if have[p.Number] {
			continue
		}
		if err := u.dev.AddPartition(p.Number, p.Start, p.DeviceLength(ssz)); err != nil {
			errs = append(errs, err)
		}
	}
	var out []ctl.Partition
	for _, n := range u.dev.Partitions() {
		start, length, err := u.dev.PartitionExtent(n)
		if err == nil {
			out = append(out, ctl.Partition{Device: fmt.Sprintf("%sp%d", u.dev.Path, n), Number: n, Start: start, Size: length})
		}
	}
	d.log.Info("rescanned partitions", "unit", u.Name(), "device", u.dev.Path, "label", t.Label, "partitions", len(out))
	switch {
	case len(busy) > 0:
		return out, withErrno(syscall.EBUSY, "%s: %s changed in the table but in use; the kernel keeps the old extent until it is unmounted and rescanned",
			u.Name(), strings.Join(busy, ", "))
	case len(errs) > 0:
		return out, withErrno(syscall.EIO, "%s: %v", u.Name(), errors.Join(errs...))
	}
	return out, nil
}
