"""The machinery under the entry points, one subpackage per role, each importing only those
before it: core (shared helpers) < [plug-ins] < data < eval < run < model < tools, and prep
(corpus preparation) beside tools. See docs/design.md."""
