package block

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ProbeHeadSize is how much of the start of a container probing sees;
// ProbeTailSize how much of its end (VHD keeps its footer there).
const (
	ProbeHeadSize = 2048
	ProbeTailSize = 512
)

// Format is a format driver: what QEMU calls a BlockDriver.
type Format struct {
	// Name is the canonical name (`-f NAME`); Aliases are accepted too.
	Name    string
	Aliases []string

	// Probe returns a confidence from 0 to 100 that the container with this
	// head and tail is in this format. head holds up to ProbeHeadSize bytes,
	// tail the last ProbeTailSize bytes (either may be shorter for small
	// containers). name is the container's name. Nil means never.
	Probe func(head, tail []byte, name string) int

	// Open turns a container into an Image. It owns f from then on and
	// closes it with the Image (or on error).
	Open func(f File, opts *OpenOptions) (Image, error)

	// Create writes a new, empty image of this format into f, which is empty
	// and writable. Nil means the format cannot be created.
	Create func(f File, opts Options) error

	// CheckCreate, when set, refuses what Create would refuse, without a
	// container: block.Create runs it before it opens (and empties) the
	// file, so a bad request leaves an existing file as it was. name is
	// the image to create, for resolving a relative backing file. It
	// returns the length the container will have, or 0 when that is small
	// or unknown, so that the protocol can make sure it can hold it.
	CheckCreate func(name string, opts Options) (int64, error)

	// ReadersShareWrite: a read-only open lets others write the
	// container (but not resize it), as qemu-nbd -r on a raw image does,
	// and a writable one needs resizing only when it resizes (see
	// Locker). A format without metadata cannot be left inconsistent by a
	// writer, only show changing data; formats with metadata refuse
	// writers while they read.
	ReadersShareWrite bool

	// CreateOptions lists what Create understands, with defaults and help,
	// using qemu-img's option names.
	CreateOptions []OptionSpec
}

var registry = struct {
	sync.RWMutex
	formats map[string]*Format // by name and alias
	order   []*Format
}{formats: map[string]*Format{}}

// Register adds a format driver. It panics on a duplicate name, which is a
// programming error caught at init time.
func Register(f *Format) {
	registry.Lock()
	defer registry.Unlock()
	for _, n := range append([]string{f.Name}, f.Aliases...) {
		if _, dup := registry.formats[n]; dup {
			panic("block: format registered twice: " + n)
		}
		registry.formats[n] = f
	}
	registry.order = append(registry.order, f)
}

// Lookup finds a format by name or alias.
func Lookup(name string) (*Format, error) {
	registry.RLock()
	defer registry.RUnlock()
	if f, ok := registry.formats[name]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("%w '%s' (known formats: %s)", ErrUnknownFormat, name, strings.Join(formatNamesLocked(), ", "))
}

// Formats lists the registered formats by name.
func Formats() []string {
	registry.RLock()
	defer registry.RUnlock()
	return formatNamesLocked()
}

func formatNamesLocked() []string {
	names := make([]string, 0, len(registry.order))
	for _, f := range registry.order {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	return names
}

// Probe picks the format with the highest score for the given head and
// tail; raw is the fallback when nothing scores. The returned score is the
// winner's.
func Probe(head, tail []byte, name string) (*Format, int) {
	registry.RLock()
	defer registry.RUnlock()
	var best *Format
	score := 0
	for _, f := range registry.order {
		if f.Probe == nil {
			continue
		}
		if s := f.Probe(head, tail, name); s > score {
			best, score = f, s
		}
	}
	if best == nil {
		best = registry.formats["raw"]
	}
	return best, score
}
