package imgtool

import (
	"fmt"
	"strconv"
	"strings"

	"vdisk/block"
)

// CreateRequest is what `vdisk create` was asked for.
type CreateRequest struct {
	Name          string
	Format        string // empty means raw
	Options       string // the -o string
	Backing       string // -b
	BackingFormat string // -F
	Size          int64  // negative when not given
}

// PrepareCreate checks a create request and turns it into the format and
// its parsed options, as qemu-img create does: -b and -F become the
// backing_file and backing_fmt options, which only formats that declare
// them accept; without a size, the backing image's virtual size is used.
// Like qemu-img, a backing file needs its format named: probing it would
// let a guest-controlled raw backing file pose as another format.
func PrepareCreate(r CreateRequest) (*block.Format, block.Options, error) {
	name := r.Name
	fmtName := r.Format
	if fmtName == "" {
		fmtName = "raw"
	}
	f, err := block.Lookup(fmtName)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	if f.Create == nil {
		return nil, nil, fmt.Errorf("%s: format '%s' does not support image creation", name, f.Name)
	}
	pairs, err := block.SplitOptionString(r.Options)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	size := r.Size
	if r.Backing != "" || r.BackingFormat != "" {
		if !hasSpec(f, "backing_file") {
			return nil, nil, fmt.Errorf("%s: backing file not supported for file format '%s'", name, f.Name)
		}
		if r.Backing == "" {
			return nil, nil, fmt.Errorf("%s: a backing format (-F) needs a backing file (-b)", name)
		}
		if hasPair(pairs, "backing_file") || hasPair(pairs, "backing_fmt") {
			return nil, nil, fmt.Errorf("%s: give the backing file either with -b/-F or with -o, not both", name)
		}
		pairs = append(pairs, [2]string{"backing_file", r.Backing})
		if r.BackingFormat == "" || size < 0 {
			// Read without its locks, as qemu-img create does: the
			// backing image may be open for writing elsewhere.
			b, err := block.Open(block.ResolveBacking(name, r.Backing), block.OpenOptions{Format: r.BackingFormat, ReadOnly: true, NoBacking: true, ForceShare: true})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: could not open backing file: %w", name, err)
			}
			in, ierr := b.Info()
			bsize := b.Size()
			b.Close()
			if ierr != nil {
				return nil, nil, fmt.Errorf("%s: %w", r.Backing, ierr)
			}
			if r.BackingFormat == "" {
				return nil, nil, fmt.Errorf("%s: backing file specified without backing format (detected format of %s: %s; pass -F %s)", name, r.Backing, in.Format, in.Format)
			}
			if size < 0 {
				size = bsize
			}
		}
		if r.BackingFormat != "" {
			if _, err := block.Lookup(r.BackingFormat); err != nil {
				return nil, nil, fmt.Errorf("%s: backing format: %w", name, err)
			}
			pairs = append(pairs, [2]string{"backing_fmt", r.BackingFormat})
		}
	}
	if size >= 0 {
		if hasPair(pairs, "size") {
			return nil, nil, fmt.Errorf("%s: size given twice (argument and -o size)", name)
		}
		pairs = append(pairs, [2]string{"size", strconv.FormatInt(size, 10)})
	}
	if !hasPair(pairs, "size") {
		return nil, nil, fmt.Errorf("%s: image creation needs a size parameter", name)
	}
	o, err := block.ParseOptions(f.CreateOptions, pairs)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, o, nil
}

func hasSpec(f *block.Format, name string) bool {
	for _, s := range f.CreateOptions {
		if s.Name == name {
			return true
		}
	}
	return false
}

func hasPair(pairs [][2]string, name string) bool {
	for _, p := range pairs {
		if p[0] == name {
			return true
		}
	}
	return false
}

// FormattingLine is qemu-img create's first line: the options that have
// a value, in the order the format declares them.
func FormattingLine(name string, f *block.Format, o block.Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=%s", name, f.Name)
	for _, s := range f.CreateOptions {
		v, ok := o[s.Name]
		if !ok {
			continue
		}
		if x, isBool := v.(bool); isBool {
			v = "off"
			if x {
				v = "on"
			}
		}
		fmt.Fprintf(&b, " %s=%v", s.Name, v)
	}
	return b.String()
}
