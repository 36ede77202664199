"""Reading and writing the data formats the field uses: webdataset shards as img2dataset writes
them, ImageFolder trees and file lists, and the synthetic world (:mod:`oodlab.data.synth`)."""
