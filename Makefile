# Build and install atomic-preload. Paths are baked into the binaries at build time, so
# the generated units name the installed helper: `make PREFIX=/usr/local` builds for that.
PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
# systemd's own directories live under /usr/lib whatever PREFIX is, unless overridden.
SYSTEMD_DIR ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/systemd,$(PREFIX)/lib/systemd)
SYSTEM_UNIT_DIR ?= $(SYSTEMD_DIR)/system
SYSTEM_GENERATOR_DIR ?= $(SYSTEMD_DIR)/system-generators
MANDIR ?= $(PREFIX)/share/man
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(PREFIX)/share/zsh/vendor-completions
FISH_COMPLETION_DIR ?= $(PREFIX)/share/fish/vendor_completions.d
DOCKER ?= /usr/bin/docker
PODMAN ?= /usr/bin/podman
# The OCI runtime system containers' units run (Debian: /usr/sbin/runc; crun works too).
RUNTIME ?= /usr/sbin/runc
CARGO ?= cargo
DESTDIR ?=

# STATIC=1 (the default) links glibc statically: the generator runs at every boot and
# daemon-reload, and resolving shared libraries was ~0.3 ms of its 1.7 ms for 10 entries
# (bench/generator.sh); the helper starts once per stage. STATIC=0 links dynamically.
STATIC ?= 1
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# Where cargo builds (it honours $CARGO_TARGET_DIR, so must we).
TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
ifeq ($(STATIC),1)
# crt-static needs an explicit --target (so build scripts and proc macros stay dynamic).
CARGO_FLAGS = --target $(HOST)
RELEASE = $(TARGET_DIR)/$(HOST)/release
STATIC_RUSTFLAGS = RUSTFLAGS="$(RUSTFLAGS) -C target-feature=+crt-static"
else
RELEASE = $(TARGET_DIR)/release
endif
BUILD_ENV = ATOMIC_PRELOAD_BINDIR=$(BINDIR) ATOMIC_PRELOAD_UNITDIR=$(SYSTEM_UNIT_DIR) \
	ATOMIC_PRELOAD_DOCKER=$(DOCKER) ATOMIC_PRELOAD_PODMAN=$(PODMAN) \
	ATOMIC_PRELOAD_RUNTIME=$(RUNTIME) $(STATIC_RUSTFLAGS)
UNITS = atomic-preload.target atomic-preload-load.service atomic-preload-refresh.service \
	atomic-preload-refresh.path

.PHONY: all build units docs install uninstall check clean release-dir deb \
	install-anaconda-addon anaconda-updates-img

all: build units docs

build:
	$(BUILD_ENV) $(CARGO) build --release --locked $(CARGO_FLAGS)

# Where `build` puts the binaries (for scripts: bench/).
release-dir:
	@echo $(RELEASE)

# Static units with the helper's installed path filled in.
units: $(addprefix build/units/,$(UNITS))
build/units/%: units/% Makefile
	@mkdir -p build/units
	sed -e 's|@BINDIR@|$(BINDIR)|g' $< > $@

docs:
	$(CARGO) run --quiet --locked --example gen-docs -- build/docs

install: all
	install -Dm755 $(RELEASE)/atomic-preload $(DESTDIR)$(BINDIR)/atomic-preload
	install -Dm755 $(RELEASE)/atomic-preload-generator \
		$(DESTDIR)$(SYSTEM_GENERATOR_DIR)/atomic-preload-generator
	for u in $(UNITS); do install -Dm644 build/units/$$u $(DESTDIR)$(SYSTEM_UNIT_DIR)/$$u; done
	install -Dm644 -t $(DESTDIR)$(MANDIR)/man8 build/docs/man8/*.8
	install -Dm644 -t $(DESTDIR)$(MANDIR)/man1 build/docs/man1/*.1
	install -Dm644 build/docs/completions/atomic-preload.bash $(DESTDIR)$(BASH_COMPLETION_DIR)/atomic-preload
	install -Dm644 build/docs/completions/_atomic-preload $(DESTDIR)$(ZSH_COMPLETION_DIR)/_atomic-preload
	install -Dm644 build/docs/completions/atomic-preload.fish $(DESTDIR)$(FISH_COMPLETION_DIR)/atomic-preload.fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/atomic-preload
	rm -f $(DESTDIR)$(SYSTEM_GENERATOR_DIR)/atomic-preload-generator
	for u in $(UNITS); do rm -f $(DESTDIR)$(SYSTEM_UNIT_DIR)/$$u; done
	rm -f $(DESTDIR)$(MANDIR)/man8/atomic-preload-generator.8
	rm -f $(DESTDIR)$(MANDIR)/man1/atomic-preload.1 $(DESTDIR)$(MANDIR)/man1/atomic-preload-*.1
	rm -f $(DESTDIR)$(BASH_COMPLETION_DIR)/atomic-preload
	rm -f $(DESTDIR)$(ZSH_COMPLETION_DIR)/_atomic-preload
	rm -f $(DESTDIR)$(FISH_COMPLETION_DIR)/atomic-preload.fish

# The Anaconda add-on (%addon org_projectatomic_atomic_preloader): Python, for Anaconda's
# D-Bus add-on API (Anaconda >= 34). It runs $(BINDIR)/atomic-preload, filled in here as
# the units' path is.
ANACONDA_DIR ?= $(PREFIX)/share/anaconda
ADDON = org_projectatomic_atomic_preloader
ADDON_BUS_NAME = org.fedoraproject.Anaconda.Addons.AtomicPreload
ADDON_FILES = $(shell cd anaconda && find $(ADDON) -name '*.py' | sort)
install-anaconda-addon:
	for f in $(ADDON_FILES); do \
		install -d $(DESTDIR)$(ANACONDA_DIR)/addons/$$(dirname $$f) && \
		sed -e 's|@BINDIR@|$(BINDIR)|g' anaconda/$$f > $(DESTDIR)$(ANACONDA_DIR)/addons/$$f && \
		chmod 644 $(DESTDIR)$(ANACONDA_DIR)/addons/$$f || exit 1; \
	done
	install -Dm644 anaconda/data/$(ADDON_BUS_NAME).service \
		$(DESTDIR)$(ANACONDA_DIR)/dbus/services/$(ADDON_BUS_NAME).service
	install -Dm644 anaconda/data/$(ADDON_BUS_NAME).conf \
		$(DESTDIR)$(ANACONDA_DIR)/dbus/confs/$(ADDON_BUS_NAME).conf

# For installers without the add-on package: an updates image (inst.updates=URL, or
# `mkksiso --updates build/atomic-preload-updates.img ks.cfg in.iso out.iso`) holding the
# add-on and the atomic-preload binary it runs (static by default, so it runs in any
# installer environment).
UPDATES_IMG = build/atomic-preload-updates.img
anaconda-updates-img: build
	rm -rf build/updates
	$(MAKE) --no-print-directory install-anaconda-addon DESTDIR=$(CURDIR)/build/updates
	install -Dm755 $(RELEASE)/atomic-preload build/updates$(BINDIR)/atomic-preload
	cd build/updates && find . -mindepth 1 | LC_ALL=C sort | \
		cpio --quiet -o -H newc -R 0:0 | gzip -9n > $(CURDIR)/$(UPDATES_IMG)
	@echo $(UPDATES_IMG)

# A Debian package, built with dpkg-deb from what `make install` puts in place (one
# layout for both): build/atomic-preload_VERSION_ARCH.deb. Maintainer scripts in debian/.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB = build/atomic-preload_$(VERSION)_$(DEB_ARCH).deb
deb: all
	rm -rf build/deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/build/deb PREFIX=/usr
	gzip -9n build/deb$(MANDIR)/man1/*.1 build/deb$(MANDIR)/man8/*.8
	# As dh_strip does: the debug info goes to build/debug/ (for a -dbgsym package or a
	# debuginfod), not into the package.
	mkdir -p build/debug
	for b in $(BINDIR)/atomic-preload $(SYSTEM_GENERATOR_DIR)/atomic-preload-generator; do \
		objcopy --only-keep-debug build/deb$$b build/debug/$$(basename $$b).debug && \
		strip --strip-unneeded --remove-section=.comment --remove-section=.note build/deb$$b && \
		objcopy --add-gnu-debuglink=build/debug/$$(basename $$b).debug build/deb$$b || exit 1; \
	done
	install -Dm644 debian/copyright build/deb/usr/share/doc/atomic-preload/copyright
	gzip -9nc debian/changelog > build/deb/usr/share/doc/atomic-preload/changelog.gz
	install -Dm644 debian/lintian-overrides build/deb/usr/share/lintian/overrides/atomic-preload
	# The control files last: Installed-Size and md5sums are of what the package holds.
	cd build/deb && find usr -type f | LC_ALL=C sort | xargs md5sum > ../deb-md5sums
	mkdir -p build/deb/DEBIAN
	sed -e 's/@VERSION@/$(VERSION)/' -e 's/@ARCH@/$(DEB_ARCH)/' \
		-e "s/@SIZE@/$$(du -sk --exclude=DEBIAN build/deb | cut -f1)/" \
		debian/control.in > build/deb/DEBIAN/control
	mv build/deb-md5sums build/deb/DEBIAN/md5sums
	install -m755 debian/postinst debian/postrm build/deb/DEBIAN/
	dpkg-deb --root-owner-group -Zxz --build build/deb $(DEB)
	@echo $(DEB)

check:
	$(CARGO) test --locked

clean:
	rm -rf build
	$(CARGO) clean
