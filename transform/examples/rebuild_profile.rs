#[tokio::main(flavor = "current_thread")]
async fn main() {
    let location = std::env::args().nth(1).unwrap();
    let mut d = pathflow_transform::derive::Deriver::open(&location, &Default::default())
        .await
        .unwrap();
    let r = d.rebuild().await.unwrap();
    println!("{r:?}");
}
