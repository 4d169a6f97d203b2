package imgtool

import (
	"fmt"
	"sort"
	"strings"

	"vdisk/block"
)

// OptionHelp lists a format's create options as qemu-img -o help does
// ("  name=<type>  - help"), sorted by name, with the default when the
// format declares one.
func OptionHelp(f *block.Format) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Supported %s options:\n", f.Name)
	specs := append([]block.OptionSpec(nil), f.CreateOptions...)
	sort.SliceStable(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	for _, s := range specs {
		line := fmt.Sprintf("  %s=<%s>", s.Name, s.Type)
		if s.Help != "" || s.Default != "" {
			if len(line) < 24 {
				line += strings.Repeat(" ", 24-len(line))
			}
			line += " - " + s.Help
			if s.Default != "" {
				line += " (default: " + s.Default + ")"
			}
		}
		b.WriteString(line + "\n")
	}
	if len(specs) == 0 {
		b.WriteString("  (none)\n")
	}
	return b.String()
}
