"""The %addon section as Anaconda's kickstart machinery hands it to the add-on (the
Boss's split, then the service's own parse), with the real pykickstart."""
import pytest

from boss import module_kickstart
from org_projectatomic_atomic_preloader.kickstart import ADDON_NAME, Source
from org_projectatomic_atomic_preloader.service.preloader import Preloader

# The original atomic-preload README's example, verbatim (README.md quotes it too).
REFERENCE = """\
%addon org_projectatomic_atomic_preloader \\
    --preload-docker http://example.com/container.tar.gz \\
    --preload-system http://example.com/syscontainer.tar.xz
- name: mysyscontainer
  install:
    system: true
  run: {}
%end
"""

HEX = "0123456789abcdef" * 4


def read(kickstart):
    """The service after reading a kickstart, and the report it gave."""
    service = Preloader()
    report = service.read_kickstart(module_kickstart(kickstart, ADDON_NAME))
    return service, report


def valid(kickstart):
    service, report = read(kickstart)
    assert report.error_messages == [], kickstart
    return service.preload


def test_the_reference_example_verbatim():
    preload = valid(REFERENCE)
    assert preload.docker == [Source("http://example.com/container.tar.gz")]
    assert preload.system == [Source("http://example.com/syscontainer.tar.xz")]
    assert preload.lines == [
        "- name: mysyscontainer\n",
        "  install:\n",
        "    system: true\n",
        "  run: {}\n",
    ]


def test_readme_quotes_the_reference_example(readme):
    assert REFERENCE in readme


def test_one_line_equals_forms_and_repeated_options_keep_their_order():
    preload = valid(
        "%addon org_projectatomic_atomic_preloader --preload-docker=http://a.example/x.tar"
        " --preload-system https://b.example/s.tar.xz --preload-docker /run/install/repo/y.tar.zst\n"
        "--preload-system=https://b.example/t.tar\n"
        "%end\n")
    assert preload.docker == [Source("http://a.example/x.tar"),
                              Source("/run/install/repo/y.tar.zst")]
    assert preload.system == [Source("https://b.example/s.tar.xz"),
                              Source("https://b.example/t.tar")]
    assert preload.lines == []


def test_digests_on_option_lines():
    preload = valid(
        "%addon org_projectatomic_atomic_preloader\n"
        f"  --preload-docker http://a.example/x.tar#sha256={HEX.upper()} \\\n"
        f"  --preload-system=http://a.example/s.tar?v=1#sha256={HEX}\n"
        "- {name: app, image: a/b:1}\n"
        "--- not an option: YAML from here on\n"
        "%end\n")
    assert preload.docker == [Source("http://a.example/x.tar", HEX)]
    assert preload.system == [Source("http://a.example/s.tar?v=1", HEX)]
    assert preload.lines == ["- {name: app, image: a/b:1}\n",
                             "--- not an option: YAML from here on\n"]


def test_a_digest_in_the_addon_line_itself_is_a_comment_to_the_installer():
    # Why the README says digests go on option lines: pykickstart cuts the %addon line
    # at "#" before any add-on sees it.
    preload = valid(
        f"%addon org_projectatomic_atomic_preloader --preload-docker http://a.example/x.tar#sha256={HEX}\n"
        "%end\n")
    assert preload.docker == [Source("http://a.example/x.tar")]


def test_blank_lines_and_comments_never_reach_the_addon():
    preload = valid(
        "%addon org_projectatomic_atomic_preloader\n"
        "- name: app\n"
        "\n"
        "  # indented comment\n"
        "  image: a/b:1  # kept: not a whole-line comment\n"
        "%end\n")
    assert preload.lines == ["- name: app\n", "  image: a/b:1  # kept: not a whole-line comment\n"]


@pytest.mark.parametrize("kickstart, line, says", [
    ("%addon org_projectatomic_atomic_preloader --preload-oops http://a.example/x.tar\n%end\n",
     1, "--preload-oops"),
    ("%addon org_projectatomic_atomic_preloader\n--preload-docker ftp://a.example/x.tar\n%end\n",
     2, "--preload-docker ftp://a.example/x.tar: not an http:// or https:// URL, nor an absolute path"),
    ("%addon org_projectatomic_atomic_preloader --preload-system docker-image:busybox\n%end\n",
     1, "an installer has no container engine to save images from"),
    ("%addon org_projectatomic_atomic_preloader --preload-docker podman-image:busybox\n%end\n",
     1, "an installer has no container engine to save images from"),
    ("%addon org_projectatomic_atomic_preloader\n\n--preload-docker 'http://a.example/b c.tar'\n%end\n",
     2, "percent-encode it (%20)"),
    ("%addon org_projectatomic_atomic_preloader\n--preload-docker http://a.example/x.tar#sha256=abc\n%end\n",
     2, "#sha256= takes a SHA-256 digest (64 hex digits)"),
    (f"%addon org_projectatomic_atomic_preloader\n--preload-docker http://a.example/x.tar#md5={HEX}\n%end\n",
     2, "the only fragment taken is #sha256=HEX"),
    ("%addon org_projectatomic_atomic_preloader --preload-docker http://a.example/\n%end\n",
     1, "must end in the archive's file name"),
    ("%addon org_projectatomic_atomic_preloader --preload-docker relative/x.tar\n%end\n",
     1, "nor an absolute path"),
    ("%addon org_projectatomic_atomic_preloader --preload-docker\n%end\n",
     1, "--preload-docker"),
    ("%addon org_projectatomic_atomic_preloader stray\n%end\n",
     1, "stray"),
    ("%addon org_projectatomic_atomic_preloader\n--preload-docker 'http://a.example/x.tar\n%end\n",
     2, "No closing quotation"),
])
def test_errors_name_their_line(kickstart, line, says):
    _, report = read(kickstart)
    assert len(report.error_messages) == 1, report
    error = report.error_messages[0]
    assert error.line_number == line, error
    assert says in error.message, error


@pytest.mark.parametrize("kickstart", [
    REFERENCE,
    "%addon org_projectatomic_atomic_preloader --preload-docker=http://a.example/x.tar\n%end\n",
    "%addon org_projectatomic_atomic_preloader\n"
    f"--preload-docker http://a.example/x.tar?a=1&b=2#sha256={HEX}\n"
    f"--preload-system /run/install/repo/s.tar#sha256={HEX}\n"
    "- name: app\n  image: a/b:1\n  run:\n    extra_args: [sleep, '9']\n"
    "%end\n",
    "%addon org_projectatomic_atomic_preloader\n- {name: only-config, image: a/b:1}\n%end\n",
])
def test_the_written_kickstart_reads_back_the_same(kickstart):
    first = valid(kickstart)
    service = Preloader()
    service.preload = first
    written = service.generate_kickstart()
    assert written.count("%addon org_projectatomic_atomic_preloader") == 1, written
    again = valid(written)
    assert again == first, written
    service.preload = again
    assert service.generate_kickstart() == written


def test_requirements_and_tasks_only_when_the_section_says_something():
    service, _ = read(REFERENCE)
    [requirement] = service.collect_requirements()
    assert (requirement.type, requirement.name) == ("package", "atomic-preload")
    assert len(service.install_with_tasks()) == 1
    for kickstart in ["", "%addon org_projectatomic_atomic_preloader\n%end\n"]:
        service, _ = read(kickstart)
        assert service.collect_requirements() == []
        assert service.install_with_tasks() == []
    assert Preloader().generate_kickstart().strip() == ""
