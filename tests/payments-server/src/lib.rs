//! The parts of the demo payments server that tests share: the card shapes its `card_shapes`
//! tools return, so an end-to-end test knows exactly what a client must never see.

pub mod shapes;
