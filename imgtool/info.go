package imgtool

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"vdisk/block"
)

// toQ converts a driver's format-specific value (block.OrderedMap, slices,
// numbers) into the Dict/[]any tree the renderers walk.
func toQ(v any) any {
	switch x := v.(type) {
	case block.OrderedMap:
		d := &Dict{}
		for _, kv := range x {
			d.Set(kv.Key, toQ(kv.Value))
		}
		return d
	case *block.OrderedMap:
		if x == nil {
			return nil
		}
		return toQ(*x)
	case *Dict, string, bool, int64, nil:
		return x
	case int:
		return int64(x)
	case int8, int16, int32:
		return reflect.ValueOf(x).Int()
	case uint, uint8, uint16, uint32, uint64:
		return reflect.ValueOf(x).Uint()
	case float32:
		return float64(x)
	case float64:
		return x
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Slice || rv.Kind() == reflect.Array {
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = toQ(rv.Index(i).Interface())
		}
		return out
	}
	return v
}

// InfoDict builds qemu-img info's JSON object for one image.
func InfoDict(in *block.Info) *Dict {
	d := &Dict{}
	// QAPI ImageInfo member order, which settles hash-bucket ties.
	d.Set("filename", in.Filename)
	d.Set("format", in.Format)
	d.Set("dirty-flag", in.Dirty)
	if !in.ActualSizeUnknown {
		d.Set("actual-size", in.ActualSize)
	}
	d.Set("virtual-size", in.VirtualSize)
	if in.ClusterSize != 0 {
		d.Set("cluster-size", in.ClusterSize)
	}
	if in.Encrypted {
		d.Set("encrypted", true)
	}
	if in.BackingFilename != "" {
		d.Set("backing-filename", in.BackingFilename)
		if in.FullBackingFilename != "" {
			d.Set("full-backing-filename", in.FullBackingFilename)
		}
		if in.BackingFormat != "" {
			d.Set("backing-filename-format", in.BackingFormat)
		}
	}
	if len(in.Snapshots) > 0 {
		var snaps []any
		for _, s := range in.Snapshots {
			sd := &Dict{}
			sd.Set("id", s.ID).Set("name", s.Name).Set("vm-state-size", s.VMStateSize).
				Set("date-sec", s.DateSec).Set("date-nsec", s.DateNsec).
				Set("vm-clock-sec", s.VMClockSec).Set("vm-clock-nsec", s.VMClockNsec)
			if s.ICount != nil {
				sd.Set("icount", *s.ICount)
			}
			snaps = append(snaps, sd)
		}
		d.Set("snapshots", snaps)
	}
	if in.FormatSpecific != nil {
		fs := &Dict{}
		fs.Set("type", in.FormatSpecific.Type)
		fs.Set("data", toQ(in.FormatSpecific.Data))
		d.Set("format-specific", fs)
	}
	return d
}

// InfoJSON renders infos as qemu-img info --output json does: one object,
// or with chain (--backing-chain) a list of objects, top image first.
func InfoJSON(infos []*block.Info, chain bool) string {
	if !chain && len(infos) > 0 {
		return PrettyJSON(InfoDict(infos[0])) + "\n"
	}
	var l []any
	for _, in := range infos {
		l = append(l, InfoDict(in))
	}
	return PrettyJSON(l) + "\n"
}

// InfoHuman renders infos as qemu-img info does; a chain is separated by
// blank lines.
func InfoHuman(infos []*block.Info) string {
	var parts []string
	for _, in := range infos {
		parts = append(parts, infoHuman(in))
	}
	return strings.Join(parts, "\n")
}

func infoHuman(in *block.Info) string {
	var b strings.Builder
	fmt.Fprintf(&b, "image: %s\n", in.Filename)
	fmt.Fprintf(&b, "file format: %s\n", in.Format)
	fmt.Fprintf(&b, "virtual size: %s (%d bytes)\n", block.FormatSize(in.VirtualSize), in.VirtualSize)
	if in.ActualSizeUnknown {
		b.WriteString("disk size: unavailable\n")
	} else {
		fmt.Fprintf(&b, "disk size: %s\n", block.FormatSize(in.ActualSize))
	}
	if in.Encrypted {
		b.WriteString("encrypted: yes\n")
	}
	if in.ClusterSize != 0 {
		fmt.Fprintf(&b, "cluster_size: %d\n", in.ClusterSize)
	}
	if in.Dirty {
		b.WriteString("cleanly shut down: no\n")
	}
	if in.BackingFilename != "" {
		fmt.Fprintf(&b, "backing file: %s", in.BackingFilename)
		if in.FullBackingFilename == "" {
			b.WriteString(" (cannot determine actual path)")
		} else if in.FullBackingFilename != in.BackingFilename {
			fmt.Fprintf(&b, " (actual path: %s)", in.FullBackingFilename)
		}
		b.WriteString("\n")
		if in.BackingFormat != "" {
			fmt.Fprintf(&b, "backing file format: %s\n", in.BackingFormat)
		}
	}
	if len(in.Snapshots) > 0 {
		b.WriteString("Snapshot list:\n")
		b.WriteString(SnapshotHeader() + "\n")
		for _, s := range in.Snapshots {
			b.WriteString(SnapshotLine(s) + "\n")
		}
	}
	if in.FormatSpecific != nil {
		b.WriteString("Format specific information:\n")
		dumpHuman(&b, toQ(in.FormatSpecific.Data), 1)
	}
	return b.String()
}

// SnapshotHeader is the column header of qemu-img's snapshot table.
func SnapshotHeader() string {
	return fmt.Sprintf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
}

// SnapshotLine formats one snapshot as qemu-img's table row. Dates are
// shown in local time, as qemu-img does.
func SnapshotLine(s block.SnapshotInfo) string {
	date := time.Unix(s.DateSec, 0).Format("2006-01-02 15:04:05")
	secs := s.VMClockSec
	clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, (secs/60)%60, secs%60, s.VMClockNsec/1000000)
	icount := ""
	if s.ICount != nil {
		icount = fmt.Sprint(*s.ICount)
	}
	size := block.FormatSize(s.VMStateSize)
	return fmt.Sprintf("%-9s %-16s %8s%20s%13s%11s", s.ID, s.Name, size, date, clock, icount)
}

// ChainInfo collects Info for img and, with chain, every image below it.
func ChainInfo(img block.Image, chain bool) ([]*block.Info, error) {
	var out []*block.Info
	for depth := 0; img != nil && depth <= block.MaxBackingDepth; depth++ {
		in, err := img.Info()
		if err != nil {
			return nil, err
		}
		out = append(out, in)
		if !chain {
			break
		}
		img = img.Backing()
	}
	return out, nil
}
