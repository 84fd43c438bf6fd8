use super::*;

fn problems(text: &str) -> Vec<String> {
    parse(text.as_bytes()).effective().all_problems().iter().map(|p| p.display("c.yaml").to_string()).collect()
}

#[test]
fn dbg_print() {
    for t in ["- name: a\n  image: [\n", "foo: bar\n", "- name: ab\n  image: x\n  run:\n    extra_args: [sleep, 999]\n", "- name: ab\n  image: x\n  name: cd\n", "- {name: ab, image: x}\n- &a {name: ab}\n- *a\n", "- name: ab\n\timage: x\n", "\"unterminated\n"] {
        let c = parse(t.as_bytes());
        eprintln!("{t:?} => {:#?}", c);
        eprintln!("{:?}", problems(t));
    }
}
